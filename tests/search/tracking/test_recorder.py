"""tracking/recorder.py: the MLflow writer thread never holds the driver, and nothing recorded is lost.

MLflow itself is exercised end to end in test_runs.py and test_faults.py (a real server going away, a
hung one); here a tracker stands in whose calls block or fail on command, which is what makes the thread's
ordering observable without timing anything."""

from __future__ import annotations

import threading
import time
import warnings

from autocompress.search.tracking.recorder import TrialRecord, TrialRecorder


class GatedTracker:
    """Tracker interface; `log_trial` waits for `gate` and fails while `failures` > 0."""

    uri = "gated://"

    def __init__(self, failures: int = 0) -> None:
        self.gate, self.started = threading.Event(), threading.Event()
        self.failures, self.logged, self.events = failures, [], []

    def logged_trials(self) -> set[int]:
        return set(self.logged)

    def log_trial(self, number, state, params, metrics, duration_s, worker, plan_json, error=None) -> None:
        self.started.set()
        self.gate.wait()
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("MLflow is down")
        self.logged.append(number)
        self.events.append(f"trial {number}")

    def close(self, status: str = "FINISHED") -> None:
        self.events.append(f"close {status}")


def rec(n: int) -> TrialRecord:
    return TrialRecord(n, "COMPLETE", {"layer.bits": 4}, {"fidelity": 0.9}, 1.0, "w", None)


def wait_for(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_record_returns_while_mlflow_is_busy_and_finish_waits_for_the_writer() -> None:
    tracker = GatedTracker()
    recorder = TrialRecorder(tracker, "sqlite:///o.db")
    recorder.record(rec(0))
    assert tracker.started.wait(20)  # the writer is inside log_trial(0), blocked ...
    recorder.record(rec(1))  # ... and the driver goes on recording
    recorder.record(rec(2))
    assert tracker.logged == [] and recorder.untracked == [0, 1, 2]
    tracker.gate.set()
    assert recorder.finish() == [] and tracker.logged == [0, 1, 2]  # oldest first, all before finish returns
    assert recorder._writer is None


def test_the_writer_retries_a_failure_on_its_own_and_warns_once() -> None:
    tracker = GatedTracker(failures=2)
    tracker.gate.set()
    recorder = TrialRecorder(tracker, "sqlite:///o.db", retry_s=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recorder.record(rec(0))
        assert wait_for(lambda: tracker.logged == [0])  # no later record or finish needed to retry
        recorder.finish()
    assert sum("MLflow logging failed" in str(w.message) for w in caught) == 1


def test_close_logs_what_is_kept_before_ending_the_parent_run() -> None:
    tracker = GatedTracker()
    recorder = TrialRecorder(tracker, "sqlite:///o.db")
    for n in range(3):
        recorder.record(rec(n))
    tracker.gate.set()
    assert recorder.close("KILLED")
    assert tracker.events == ["trial 0", "trial 1", "trial 2", "close KILLED"]


def test_nothing_is_started_when_tracking_is_off() -> None:
    from autocompress.search.tracking.contract import NullTracker

    recorder = TrialRecorder(NullTracker(), "sqlite:///o.db")
    recorder.record(rec(0))
    assert recorder._writer is None and recorder.finish() == []
