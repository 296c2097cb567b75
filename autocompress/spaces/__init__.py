"""Search spaces: turn an Optuna trial into a CompressionPlan without touching weights (the search issue)."""
