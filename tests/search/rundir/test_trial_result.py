"""`TrialResult` (search/rundir/trial_result.py): one COMPLETE trial read from an Optuna trial the one way the
search's summary and the report both use; feasibility follows the trial's constraints in both of Optuna's
formats."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from autocompress.search.rundir.trial_result import TrialResult, is_feasible


def _trial(number: int, system_attrs: dict, **user_attrs) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(values=[0.97, 12.5], user_attrs=user_attrs, system_attrs=system_attrs)
    trial.number = number
    return trial


def test_of_reads_values_metrics_summary_and_roles():
    t = _trial(7, {"constraints": [-0.5, 0.0]}, metrics={"fidelity": 0.97, "size_mb": 12.5, "nll": 0.1},
               plan_summary="bits 4x6", baseline="quantize bits=4")
    r = TrialResult.of(t, ["fidelity", "size_mb"], "run/plans/trial-0007.json", front=True)
    assert r == TrialResult(number=7, values={"fidelity": 0.97, "size_mb": 12.5},
                            metrics={"fidelity": 0.97, "size_mb": 12.5, "nll": 0.1},
                            plan_path="run/plans/trial-0007.json", plan_summary="bits 4x6", feasible=True, front=True,
                            baseline="quantize bits=4")
    assert dataclasses.asdict(r)["values"] == {"fidelity": 0.97, "size_mb": 12.5}  # what summary.json holds
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.front = False


def test_missing_attributes_and_infeasible():
    t = _trial(3, {"constraints:size_mb": 0.25})  # Optuna's newer format, one key per constraint
    r = TrialResult.of(t, ["fidelity", "size_mb"], "p.json", front=False, unknown_summary="?")
    assert (r.metrics, r.plan_summary, r.baseline, r.feasible, r.front) == ({}, "?", None, False, False)
    assert TrialResult.of(t, ["fidelity", "size_mb"], "p.json", front=False).plan_summary == ""
    assert is_feasible(_trial(4, {})) and not is_feasible(_trial(5, {"constraints": [0.0, 1e-9]}))
