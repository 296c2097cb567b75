"""Sweeps: several `autocompress search CONFIG` processes share one study on a database server.

What a sweep guarantees (each asserted below): every process exits 0; trial numbers run 0..n-1 with none
lost; every stored trial ends COMPLETE, PRUNED or FAIL; the uniform baselines are enqueued once and are the
first trials; budget <= finished trials (repeats of a finished plan not counted) <= budget + (P - 1) for P
processes of the local backend (a process starts a trial while the finished trials are fewer than the budget,
not counting the others' in-flight trials: at most one each); a plan finished by any process is reused
("cache") rather than run again, so two evaluated trials with the same params were in flight at the same time; one MLflow parent run holds every
trial once as a nested run. The sweep's wall time is printed (run with -s), not asserted.

The team set-up is tested once too: `mlflow server` on a PostgreSQL backend store with proxied artifacts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from autocompress.search.storage import open_storage
from autocompress.search.study import JOINS_ATTR, LOCK_SUFFIX, counted_trials
from tests.search.services import (delete_studies, fresh_postgres_database, mlflow_server,  # noqa: F401
                                   postgres_url, unique_name)
from tests.support import SPACE

PROCESSES, BUDGET = 3, 12


def write_config(tmp_path: Path, storage: str, study: str, tracking: str, budget: int = BUDGET) -> Path:
    path = tmp_path / f"{study}.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
        "space": SPACE, "budget": {"n_trials": budget}, "sampler": {"population_size": 4, "seed": 0},
        "storage": storage, "study_name": study, "tracking": {"uri": tracking},
        "run_dir": str(tmp_path / study)}))
    return path


def run_processes(config: Path, n: int) -> tuple[list[subprocess.CompletedProcess], float]:
    """Start `n` CLI searches at once on the same config; wait for all. Returns them and the wall time."""
    cmd = [sys.executable, "-m", "autocompress", "search", str(config), "--quiet", "--json"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=400)
        done.append(subprocess.CompletedProcess(cmd, p.returncode, out, err))
    return done, time.perf_counter() - t0


def mlflow_runs(uri: str, study: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("autocompress")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("autocompress.study_name") == study
               and "mlflow.parentRunId" not in r.data.tags]
    ids = {p.info.run_id for p in parents}
    return parents, [r for r in runs if r.data.tags.get("mlflow.parentRunId") in ids]


@pytest.mark.slow
def test_three_processes_share_one_study_on_postgres(tmp_path, postgres_url):  # noqa: F811
    study = unique_name("sweep")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        procs, wall = run_processes(write_config(tmp_path, postgres_url, study, tracking), PROCESSES)
        for p in procs:
            assert p.returncode == 0, p.stderr[-3000:]
        storage = open_storage(postgres_url)
        shared = optuna.load_study(study_name=study, storage=storage)
        joins = storage.get_study_system_attrs(storage.get_study_id_from_name(study))[JOINS_ATTR]
        assert joins == PROCESSES  # each process joined the one study
        assert study + LOCK_SUFFIX not in optuna.get_all_study_names(storage)  # and released the lock
        trials = shared.get_trials()
        n = len(trials)
        print(f"\n{PROCESSES} processes, budget {BUDGET}: {n} trials in {wall:.1f} s wall")
        assert [t.number for t in trials] == list(range(n))  # no number lost
        assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED", "FAIL"}
        assert BUDGET <= counted_trials(trials, BUDGET) <= BUDGET + PROCESSES - 1

        labels = [t.user_attrs.get("baseline") for t in trials]
        baselines = [label for label in labels if label]
        assert baselines == labels[:len(baselines)] and len(baselines) == len(set(baselines)) == 4

        evaluated = defaultdict(list)  # params -> trials that did model work
        for t in trials:
            if t.state.name == "COMPLETE" and t.user_attrs["worker"] != "cache":
                evaluated[json.dumps(t.params, sort_keys=True)].append(t)
        for same in evaluated.values():
            for a in same:
                for b in same:  # evaluated twice only when neither had finished when the other started
                    assert a is b or (a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete)
        workers = {t.user_attrs["worker"] for t in trials} - {"cache"}
        print(f"workers: {sorted(workers)}; cache hits: "
              f"{sum(t.user_attrs.get('worker') == 'cache' for t in trials)}")

        parents, kids = mlflow_runs(tracking, study)
        assert len(parents) == 1, [p.info.run_id for p in parents]
        numbers = sorted(int(k.data.tags["autocompress.trial_number"]) for k in kids)
        assert numbers == list(range(n))  # every trial once
    finally:
        delete_studies(postgres_url, study)


@pytest.mark.slow
def test_team_mlflow_server_on_postgres(tmp_path, postgres_url):  # noqa: F811
    """The team set-up: `mlflow server` with a PostgreSQL backend store and proxied artifacts in a directory,
    on 127.0.0.1; a search on the PostgreSQL Optuna storage logs to it."""
    import psycopg

    from autocompress.search.driver import run_search
    from tests.search.services import libpq_url
    from tests.support import make_config

    study, artifacts = unique_name("team"), tmp_path / "artifacts"
    with fresh_postgres_database(postgres_url, "ac_mlflow") as backend, mlflow_server(backend, artifacts) as url:
        try:
            config = make_config(tmp_path, storage=postgres_url, study_name=study, budget={"n_trials": 3},
                                 tracking={"uri": url, "experiment": "team"})
            result = run_search(config, show_progress=False)
            assert result.counts == {"COMPLETE": 3} and result.ui_hint.startswith(url)
            client = MlflowClient(tracking_uri=url)
            exp = client.get_experiment_by_name("team")
            runs = client.search_runs([exp.experiment_id])
            parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
            assert len(parents) == 1 and len(runs) == 4 and parents[0].data.tags["autocompress.study_name"] == study
            assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"config.yaml", "pareto.md"}
            assert list(artifacts.rglob("pareto.md")) and list(artifacts.rglob("plan.json"))  # proxied to the dir
            with psycopg.connect(libpq_url(backend)) as conn:  # the runs live in the PostgreSQL database
                assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 4
        finally:
            delete_studies(postgres_url, study)
