"""rundir/summary.py: the advice drawn from how a search went (`writer_hint`)."""

from __future__ import annotations

import optuna

from autocompress.config import SearchConfig
from autocompress.search.rundir.summary import writer_hint


def config(tmp_path, **tracking) -> SearchConfig:
    return SearchConfig.from_dict({"model": {"name": "random:bert"}, "space": {"quantize": {"bits": [4, 8]}},
                                   "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", **tracking},
                                   "run_dir": str(tmp_path / "run")})


def trials(durations: list[float], worker: str = "worker-0", state=optuna.trial.TrialState.COMPLETE) -> list:
    return [optuna.trial.create_trial(state=state, values=[1.0] if state.name == "COMPLETE" else None,
                                      user_attrs={"duration_s": d, "worker": worker}) for d in durations]


def test_short_trials_on_the_writer_thread_get_the_advice(tmp_path):
    hint = writer_hint(config(tmp_path), trials([0.2] * 9 + [5.0] * 3))
    assert "median 0.20 s" in hint and "tracking.writer: process" in hint


def test_no_advice_for_long_trials_few_trials_or_another_writer(tmp_path):
    assert writer_hint(config(tmp_path), trials([0.2] * 5 + [2.0] * 6)) == ""  # median 2 s
    assert writer_hint(config(tmp_path), trials([0.2] * 9)) == ""  # fewer than 10 evaluated
    assert writer_hint(config(tmp_path), trials([0.2] * 9) + trials([0.01] * 5, worker="cache")) == ""  # repeats
    assert writer_hint(config(tmp_path, writer="process"), trials([0.2] * 12)) == ""
    assert writer_hint(config(tmp_path, uri="none"), trials([0.2] * 12)) == ""
    pruned = trials([0.2] * 12, state=optuna.trial.TrialState.PRUNED)  # decided by the plan: no model work
    assert writer_hint(config(tmp_path), pruned) == ""
