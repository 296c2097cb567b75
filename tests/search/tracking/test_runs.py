"""MLflow tracking: parent run per study, nested run per trial, resume, "none", unreachable and real server."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from autocompress.errors import UserError
from autocompress.search.tracking.contract import NullTracker
from autocompress.search.tracking.runs import Tracker, open_tracker
from tests.search.conftest import free_port

CONFIG = {"model": {"name": "all-MiniLM-L6-v2", "task": "auto"},
          "space": {"share": "group", "quantize": {"bits": [4, 8, None], "group_size": [128]}},
          "objectives": ["maximize fidelity", "minimize size_mb"], "storage": None, "long": "x" * 7000}
STORAGE = "sqlite:////tmp/some/optuna.db"
PLANS = [
    {"layers": {"encoder.layer.0.attention.self.query": {"bits": 4}}},
    {"layers": {"encoder.layer.0.attention.self.query": {"bits": 8, "sparsity": 0.5}}},
    {"layers": {"encoder.layer.1.output.dense": {"rank": 0.25}}},
]
TRIALS = [  # number, state, metrics, error
    (0, "COMPLETE", {"fidelity": 0.99, "size_mb": 12.5}, None),
    (1, "PRUNED", {"fidelity": 0.5, "size_mb": float("nan")}, None),
    (2, "FAIL", {}, "RuntimeError: out of memory\n" + "y" * 20000),
]


def flat(plan: dict) -> dict:
    return {f"{layer}.{k}": v for layer, entry in plan["layers"].items() for k, v in entry.items()}


def log_study(uri: str, study: str = "study-a", storage: str = STORAGE, experiment: str = "autocompress"):
    tracker = Tracker.open(uri, experiment, study, storage, CONFIG, "runs/study-a")
    for (number, state, metrics, error), plan in zip(TRIALS, PLANS):
        tracker.log_trial(number, state, flat(plan), metrics, duration_s=2.0 + number, worker=f"w{number}",
                          plan_json=json.dumps(plan), error=error)
    tracker.log_metrics({"n_complete": 1, "n_pruned": 1, "n_fail": 1, "best_fidelity": 0.99})
    tracker.log_text("| trial | fidelity |\n| 0 | 0.99 |\n", "pareto.md")
    tracker.close()
    return tracker


def read_text(client: MlflowClient, run_id: str, path: str, tmp: Path) -> str:
    dst = tmp / run_id
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst))).read_text()


def check_study(uri: str, tracker: Tracker, tmp: Path) -> None:
    """Exactly one parent and three children, with the params, metrics, tags, status and artifacts logged."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment(tracker.experiment_id)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.run_name)
    assert [p.info.run_id for p in parents] == [tracker.parent_run_id]
    parent = parents[0]
    assert parent.info.run_name == "study-a" and parent.info.status == "FINISHED"
    assert parent.data.tags["autocompress.study_name"] == "study-a"
    assert parent.data.tags["autocompress.storage"] == STORAGE
    assert parent.data.tags["autocompress.run_dir"] == "runs/study-a"
    assert "study-a" in parent.data.tags["mlflow.note.content"]
    assert parent.data.params["model.name"] == "all-MiniLM-L6-v2"
    assert parent.data.params["space.quantize.bits"] == "[4, 8, null]"
    assert parent.data.params["storage"] == "None"
    assert len(parent.data.params["long"]) <= 6000 and parent.data.params["long"].endswith("...")
    assert parent.data.metrics == {"n_complete": 1, "n_pruned": 1, "n_fail": 1, "best_fidelity": 0.99}
    assert "x" * 100 in read_text(client, parent.info.run_id, "config.yaml", tmp)
    assert "0.99" in read_text(client, parent.info.run_id, "pareto.md", tmp)

    assert [c.info.run_name for c in children] == ["trial-0000", "trial-0001", "trial-0002"]
    for child, (number, state, metrics, error), plan in zip(children, TRIALS, PLANS):
        tags, data = child.data.tags, child.data
        assert tags["mlflow.parentRunId"] == tracker.parent_run_id
        assert tags["autocompress.trial_number"] == str(number)
        assert tags["autocompress.state"] == state and tags["autocompress.worker"] == f"w{number}"
        assert child.info.status == ("FAILED" if state == "FAIL" else "FINISHED")
        assert data.params == {k: str(v) for k, v in flat(plan).items()}
        finite = {k: v for k, v in metrics.items() if v == v}
        assert data.metrics == {**finite, "duration_s": 2.0 + number}
        assert abs((child.info.end_time - child.info.start_time) / 1000 - (2.0 + number)) < 0.01
        assert json.loads(read_text(client, child.info.run_id, "plan.json", tmp)) == plan
    assert "autocompress.error" not in children[0].data.tags
    assert children[1].data.tags["autocompress.nonfinite_metrics"] == "size_mb=nan"
    error = children[2].data.tags["autocompress.error"]
    assert error.endswith("y" * 100) and len(error) <= 8000


@pytest.fixture
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path}/not/yet/mlflow.db"  # the directory does not exist yet


def test_sqlite_study_is_logged(sqlite_uri, tmp_path):
    tracker = log_study(sqlite_uri)
    check_study(sqlite_uri, tracker, tmp_path / "dl")
    assert (tmp_path / "not/yet/mlartifacts").is_dir()  # artifacts beside the database, not in the cwd
    assert tracker.ui_hint() == f"mlflow ui --backend-store-uri {sqlite_uri} --host 127.0.0.1"


def test_resume_reuses_parent_and_skips_logged_trials(sqlite_uri, tmp_path):
    first = log_study(sqlite_uri)
    again = open_tracker(sqlite_uri, "autocompress", "study-a", STORAGE, {"other": "config"}, "runs/study-a")
    assert again.parent_run_id == first.parent_run_id and again.experiment_id == first.experiment_id
    assert again.logged_trials() == {0, 1, 2}
    client = MlflowClient(tracking_uri=sqlite_uri)
    assert client.get_run(again.parent_run_id).info.status == "RUNNING"
    again.log_trial(1, "COMPLETE", {"a.bits": 2}, {"fidelity": 0.1}, 1.0, "w9", "{}")  # no-op
    again.log_trial(3, "COMPLETE", {"a.bits": 2}, {"fidelity": 0.1}, 1.0, "w9", "{}")
    again.close("KILLED")
    children = client.search_runs([first.experiment_id], f"tags.mlflow.parentRunId = '{first.parent_run_id}'")
    assert sorted(r.data.tags["autocompress.trial_number"] for r in children) == ["0", "1", "2", "3"]
    assert client.get_run(first.parent_run_id).info.status == "KILLED"
    assert client.get_run(first.parent_run_id).data.params["model.name"] == "all-MiniLM-L6-v2"  # not re-logged
    assert open_tracker(sqlite_uri, "autocompress", "study-a", STORAGE, {}, "r").logged_trials() == {0, 1, 2, 3}


def test_experiment_opens_on_its_runs(sqlite_uri):
    """MLflow 3's UI opens an experiment by its kind tag, an untagged one on the (empty) GenAI overview: the
    experiment a search creates is marked machine learning, an existing untagged one gets the tag when a study
    opens it, and one a user marked otherwise keeps its kind."""
    client = MlflowClient(tracking_uri=sqlite_uri)
    tracker = log_study(sqlite_uri)
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("made-before")
    mine = client.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("made-before", "mine"):
        Tracker.open(sqlite_uri, name, "study-b", STORAGE, {}, "r").close()
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"


def test_half_written_trial_is_replaced_on_resume(sqlite_uri):
    tracker = log_study(sqlite_uri)
    client = MlflowClient(tracking_uri=sqlite_uri)
    client.create_run(tracker.experiment_id, run_name="trial-0003",  # the driver died before terminating it
                      tags={"mlflow.parentRunId": tracker.parent_run_id, "autocompress.trial_number": "3"})
    again = Tracker.open(sqlite_uri, "autocompress", "study-a", STORAGE, CONFIG, "r")
    assert again.logged_trials() == {0, 1, 2}
    again.log_trial(3, "COMPLETE", {}, {"fidelity": 0.7}, 1.0, "w0", None)
    runs = client.search_runs([tracker.experiment_id], "attributes.run_name = 'trial-0003'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.metrics["fidelity"] == 0.7


def test_other_study_or_storage_gets_its_own_parent(sqlite_uri):
    a = log_study(sqlite_uri, "study-a")
    b = Tracker.open(sqlite_uri, "autocompress", "study-b", STORAGE, CONFIG, "runs/b")
    c = Tracker.open(sqlite_uri, "autocompress", "study-a", "sqlite:////elsewhere/optuna.db", CONFIG, "runs/c")
    assert len({a.parent_run_id, b.parent_run_id, c.parent_run_id}) == 3
    assert b.logged_trials() == set() and c.logged_trials() == set()
    assert b.experiment_id == a.experiment_id


def test_bad_state_and_status_are_refused(sqlite_uri):
    tracker = Tracker.open(sqlite_uri, "autocompress", "s", STORAGE, {}, "r")
    with pytest.raises(ValueError, match="RUNNING"):
        tracker.log_trial(0, "RUNNING", {}, {}, 1.0, "w", None)
    with pytest.raises(ValueError, match="DONE"):
        tracker.close("DONE")


def test_none_is_a_null_tracker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = Tracker.open("none", "autocompress", "s", STORAGE, CONFIG, "r")
    assert isinstance(tracker, NullTracker) and not isinstance(tracker, Tracker)
    tracker.log_trial(0, "COMPLETE", {"a.bits": 4}, {"fidelity": 1.0}, 1.0, "w", "{}")
    tracker.log_text("x", "pareto.md")
    tracker.log_metrics({"n": 1})
    tracker.close()
    assert tracker.logged_trials() == set() and tracker.parent_run_id is None and tracker.ui_hint() is None
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_a_user_error():
    uri = f"http://127.0.0.1:{free_port()}"
    before = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot be reached.*tracking.uri: none"):
        Tracker.open(uri, "autocompress", "s", STORAGE, CONFIG, "r")
    assert time.monotonic() - start < 10
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == before  # the quick-check setting is undone


def test_real_server_round_trip(mlflow_server, tmp_path, capsys):
    # the server is shared with other tests: this study gets an experiment of its own
    tracker = log_study(mlflow_server, experiment="tracking-round-trip")
    assert capsys.readouterr().out == ""  # no "View run ..." lines in the driver's terminal
    check_study(mlflow_server, tracker, tmp_path)
    assert tracker.ui_hint() == f"{mlflow_server}/#/experiments/{tracker.experiment_id}/runs"
    again = Tracker.open(mlflow_server, "tracking-round-trip", "study-a", STORAGE, CONFIG, "runs/study-a")
    assert again.parent_run_id == tracker.parent_run_id and again.logged_trials() == {0, 1, 2}
    again.close()
