"""MLflow tracking of a search: the tracker (one parent run per study, one nested run per trial), the
recorder that keeps MLflow off the driver's path (writer thread), the writer child process, and the artifacts
that `export` and `report` attach afterwards. The Optuna storage is the record; MLflow is a view of it."""
