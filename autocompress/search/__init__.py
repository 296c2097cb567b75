"""The search: orchestration of an Optuna study over compression plans.

This package holds the orchestration (driver, a trial's start and end, study and storage, samplers, early
stopping, Pareto front and pick rule, liveness of trials, interrupts, progress, preflight checks, `auto`
configs). Its subpackages hold the roles around it: `workers` (where and how a trial runs), `tracking`
(MLflow), `rundir` (the run directory that `report` and `export` read back) and `seeding` (sensitivity and
budgeted seed plans).
"""
