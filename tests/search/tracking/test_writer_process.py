"""tracking/writer_process.py: nested runs logged by a child process look exactly like the writer thread's, an MLflow
error or a dead child comes back as a logging failure the recorder keeps and retries, and no child outlives
the search. Real MLflow (SQLite) and real child processes throughout."""

from __future__ import annotations

import threading
import warnings

import pytest
from mlflow import MlflowClient

from autocompress.search.driver import run_search
from autocompress.search.tracking.recorder import TrialRecord, TrialRecorder
from autocompress.search.tracking.writer_process import TrackerProcess, TrackerProcessError
from autocompress.search.tracking.runs import Tracker
from tests.support import children, make_config
from tests.search.tracking.test_runs import CONFIG, PLANS, STORAGE, TRIALS, check_study, flat


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def open_process(uri: str) -> TrackerProcess:
    return TrackerProcess(Tracker.open(uri, "autocompress", "study-a", STORAGE, CONFIG, "runs/study-a"))


def test_a_study_logged_by_the_child_has_the_same_runs(uri, tmp_path):
    tracker = open_process(uri)
    for (number, state, metrics, error), plan in zip(TRIALS, PLANS):
        tracker.log_trial(number, state, flat(plan), metrics, duration_s=2.0 + number, worker=f"w{number}",
                          plan_json=__import__("json").dumps(plan), error=error)
    child = tracker._proc
    assert child is not None and child.poll() is None  # one child served all three trials
    tracker.log_trial(0, "COMPLETE", {}, {"fidelity": 0.0}, 1.0, "w", None)  # logged already: a no-op
    assert tracker.logged_trials() == {0, 1, 2}
    tracker.log_metrics({"n_complete": 1, "n_pruned": 1, "n_fail": 1, "best_fidelity": 0.99})  # here, not in the child
    tracker.log_text("| trial | fidelity |\n| 0 | 0.99 |\n", "pareto.md")
    tracker.close()
    assert child.poll() == 0 and tracker._proc is None  # the child ended with the tracker
    check_study(uri, tracker.tracker, tmp_path / "dl")


def test_an_mlflow_error_in_the_child_is_raised_here_and_the_child_goes_on(uri):
    tracker = open_process(uri)
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(tracker.experiment_id)
    with pytest.raises(TrackerProcessError, match="MlflowException.*(deleted|active)"):
        tracker.log_trial(0, "COMPLETE", {}, {"fidelity": 0.5}, 1.0, "w", None)
    assert tracker.logged_trials() == set()
    client.restore_experiment(tracker.experiment_id)
    tracker.log_trial(0, "COMPLETE", {}, {"fidelity": 0.5}, 1.0, "w", None)
    tracker.close()
    runs = client.search_runs([tracker.experiment_id], "attributes.run_name = 'trial-0000'")
    assert len(runs) == 1 and runs[0].data.metrics["fidelity"] == 0.5


def test_a_child_that_dies_during_a_call_is_a_failure_and_the_next_call_starts_another(uri):
    tracker = open_process(uri)
    tracker._start()
    first = tracker._proc
    killer = threading.Timer(0.3, first.kill)  # the child is still importing MLflow (seconds): mid-call
    killer.start()
    with pytest.raises(TrackerProcessError, match="writer process ended"):
        tracker.log_trial(0, "COMPLETE", {}, {"fidelity": 0.5}, 1.0, "w", None)
    killer.join()
    assert tracker._proc is None and tracker.logged_trials() == set()
    tracker.log_trial(0, "COMPLETE", {}, {"fidelity": 0.5}, 1.0, "w", None)
    second = tracker._proc
    second.kill()  # dead between calls: replaced without a failure
    second.wait()
    tracker.log_trial(1, "COMPLETE", {}, {"fidelity": 0.6}, 1.0, "w", None)
    assert tracker._proc not in (first, second) and tracker.logged_trials() == {0, 1}
    tracker.close()


def test_the_recorder_keeps_what_the_child_could_not_log_and_logs_it_later(uri):
    tracker = open_process(uri)
    client = MlflowClient(tracking_uri=uri)
    recorder = TrialRecorder(tracker, STORAGE, timeout_s=5, retry_s=0)
    client.delete_experiment(tracker.experiment_id)  # MLflow refuses every nested run
    for n in range(3):
        recorder.record(TrialRecord(n, "COMPLETE", {"layer.bits": 4}, {"fidelity": 0.9}, 1.0, "w", None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert recorder.finish() == [0, 1, 2]
    assert any("MLflow logging failed (TrackerProcessError: MlflowException" in str(w.message) for w in caught)
    client.restore_experiment(tracker.experiment_id)
    assert recorder.flush(force=True) and recorder.untracked == []
    recorder.close("FINISHED")
    assert tracker._proc is None and tracker.logged_trials() == {0, 1, 2}
    assert client.get_run(tracker.parent_run_id).info.status == "FINISHED"


def test_a_search_with_the_process_writer_logs_every_trial(tmp_path):
    config = make_config(tmp_path, budget={"n_trials": 4},
                         tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "writer": "process"})
    result = run_search(config, show_progress=False)
    parent, kids = children(config.tracking.uri)
    assert result.untracked == [] and parent.info.status == "FINISHED"
    assert sorted(int(k.data.tags["autocompress.trial_number"]) for k in kids) == [0, 1, 2, 3]
    assert all(k.info.status == "FINISHED" and "fidelity" in k.data.metrics for k in kids)


def test_the_child_logs_to_a_real_mlflow_server(mlflow_server, tmp_path):
    tracker = TrackerProcess(Tracker.open(mlflow_server, "writer-process", "study-a", STORAGE, CONFIG, "runs/a"))
    for number in range(3):
        tracker.log_trial(number, "COMPLETE", {"layer.bits": 4}, {"fidelity": 0.9 + number / 100}, 1.0, "w",
                          '{"layers": {}}')
    tracker.close()
    client = MlflowClient(tracking_uri=mlflow_server)
    kids = client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{tracker.parent_run_id}'")
    assert sorted(k.info.run_name for k in kids) == ["trial-0000", "trial-0001", "trial-0002"]
    dst = tmp_path / "dl"
    dst.mkdir()
    assert open(client.download_artifacts(kids[0].info.run_id, "plan.json", str(dst))).read() == '{"layers": {}}'

