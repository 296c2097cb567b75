"""Helpers shared by test modules: a tiny search config and readers of what a search stored.

`make_config(tmp_path, **extra)`: a search over `random:bert` with `SPACE`, 6 trials, an NSGA-II population of
4 (seed 0), MLflow in `tmp_path/mlflow.db`, the run directory `tmp_path/run` and the study "tiny"; `extra`
replaces top-level sections. `children(uri, study)`: the study's MLflow parent run and its nested trial runs.
`stored_trials(config)`: the study's trials as Optuna stored them. `stop_process_group(proc)`: a server started
with `start_new_session=True` stopped, with every process it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
from mlflow import MlflowClient

from autocompress.config import SearchConfig

SPACE = {"quantize": {"bits": [2, 4, 8, None], "group_size": [16, 64], "method": ["rtn", "gptq"]},
         "structured": {"sparsity": [0.0, 0.5]}}


def make_config(tmp_path: Path, **extra) -> SearchConfig:
    data = {"model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
            "space": SPACE, "budget": {"n_trials": 6}, "sampler": {"population_size": 4, "seed": 0},
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "run_dir": str(tmp_path / "run"),
            "study_name": "tiny"}
    data.update(extra)
    return SearchConfig.from_dict(data).resolved(tmp_path)


def children(uri: str, study: str = "tiny") -> tuple[object, list]:
    """(the parent run of `study`, its nested runs) in the MLflow store at `uri`; exactly one parent."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("autocompress")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("autocompress.study_name") == study]
    assert len(parents) == 1
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], kids


def stored_trials(config: SearchConfig) -> list:
    return optuna.load_study(study_name=config.study_name, storage=config.storage).get_trials()


def stop_process_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM to the process group led by `proc` (started with `start_new_session=True`), then wait until
    no process of the group is left (the servers a command started shut down too); SIGKILL to the group
    after `timeout` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    deadline, killed = time.monotonic() + timeout, False
    while True:
        proc.poll()  # reap the leader, so that only live members keep the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.2)


def sample_plans(space, n: int = 30, seed: int = 0) -> list[tuple[dict, object]]:
    """(trial params, plan) of `n` random-sampler trials of a `ConfigSpace`, each told 0.0."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        plan = space.sample(trial)
        out.append((dict(trial.params), plan))
        study.tell(trial, 0.0)
    return out
