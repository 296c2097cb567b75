"""The search: Optuna studies, trial backends (local, Ray), MLflow tracking, export (the search issue)."""
