"""`TrialResult`: one COMPLETE trial of a study, as the readers of a run see it.

The end of a search returns the feasible Pareto front and the picked trial as `TrialResult`s
(`SearchResult.pareto`, `.picked`, written to `summary.json`), and the report draws every COMPLETE trial as
one (`StudyView.points`). Both read the same Optuna trial the same way, so they share this one type.

Two other per-trial types stay apart because they hold other things (docs/architecture.md, "Per-trial
records"): `TrialRecord` (search/tracking/recorder.py) is what MLflow logs of any finished trial (COMPLETE,
PRUNED or FAIL: its state, params, plan JSON, duration, worker, error; no objective values, no roles on the
front), written by the driver while the search runs; `ExportResult` (export/from_run.py) is the outcome of
one export (files written, bytes, kernels, the searched metrics next to the metrics measured again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True, kw_only=True)
class TrialResult:
    """One COMPLETE trial.

      number: the Optuna trial number.
      values: its objective values by metric name, in the config's objective order.
      metrics: every metric it reported (user attr `metrics`).
      plan_path: its plan file in the run directory (`plans/trial-NNNN.json`).
      plan_summary: the plan in short (user attr `plan_summary`, e.g. "bits 4x6").
      feasible: every constraint of the study holds (`is_feasible`).
      front: on the study's feasible Pareto front (repeats of an earlier plan left out).
      baseline: the label of a uniform baseline or sensitivity-seeded plan it was enqueued as, else None.
    """

    number: int
    values: dict[str, float]
    metrics: dict[str, float]
    plan_path: str
    plan_summary: str
    feasible: bool
    front: bool
    baseline: str | None = None

    @classmethod
    def of(cls, trial: Any, objectives: Sequence[str], plan_path: str, *, front: bool,
           unknown_summary: str = "") -> "TrialResult":
        """From an Optuna trial (COMPLETE) of a study whose objective metrics are `objectives`;
        `unknown_summary` stands for a plan summary the trial did not record."""
        return cls(number=trial.number, values=dict(zip(objectives, trial.values)),
                   metrics=dict(trial.user_attrs.get("metrics", {})), plan_path=str(plan_path),
                   plan_summary=trial.user_attrs.get("plan_summary", unknown_summary), feasible=is_feasible(trial),
                   front=front, baseline=trial.user_attrs.get("baseline"))


def is_feasible(trial: Any) -> bool:
    """Every constraint value set on the trial is <= 0 (Optuna's convention; both of its storage formats)."""
    return all(v <= 0 for v in trial.constraints.values())
