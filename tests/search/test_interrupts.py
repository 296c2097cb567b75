"""Ctrl-C during a search: deferred out of storage calls, at once while trials run or are waited for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from autocompress.search import interrupts
from autocompress.search.driver import run_search
from autocompress.search.trial_book import TrialBook
from tests.support import children, make_config, stored_trials

ctrl_c = lambda: signal.raise_signal(signal.SIGINT)  # noqa: E731  (delivered before the next statement)


@pytest.fixture(autouse=True)
def python_default_sigint():
    """Python's own SIGINT handler during each test, whatever the test process inherited (a suite started as
    a background job without job control has SIGINT ignored), and the inherited one put back after."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_an_ignored_sigint_stays_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupts.guard():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        ctrl_c()  # ignored, as the process was told
        interrupts.check()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_deferred_by_default_and_raised_at_the_next_check():
    ran = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.guard():
            ctrl_c()
            ran.append("after the signal")
            interrupts.check()
            ran.append("after the check")
    assert ran == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_interruptible_blocks_raise_at_once_and_on_entry():
    ran = []
    with interrupts.guard(), pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        ctrl_c()
        ran.append("after the signal")
    with interrupts.guard():
        ctrl_c()  # deferred here...
        ran.append("deferred")
        with pytest.raises(KeyboardInterrupt), interrupts.interruptible():  # ...raised on entry
            ran.append("inside")
    assert ran == ["deferred"]


def test_a_second_ctrl_c_is_raised_at_once():
    ran = []
    with interrupts.guard(), pytest.raises(KeyboardInterrupt):
        ctrl_c()
        ran.append("first deferred")
        ctrl_c()
        ran.append("never")
    assert ran == ["first deferred"]


def test_once_one_was_raised_the_next_is_raised_at_once():
    ran = []
    with interrupts.guard():
        with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
            ctrl_c()
        try:  # the search's clean-up, in the default (deferring) mode
            ctrl_c()
            ran.append("never")
        except KeyboardInterrupt:
            ran.append("raised at once")
    assert ran == ["raised at once"]


def test_deferred_block_inside_an_interruptible_one_finishes_first():
    ran = []
    with interrupts.guard(), pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        with interrupts.deferred():
            ctrl_c()
            ran.append("the write ends")
        ran.append("never")
    assert ran == ["the write ends"]


def test_a_deferred_ctrl_c_left_at_the_end_of_the_guard_is_raised():
    with pytest.raises(KeyboardInterrupt), interrupts.guard():
        ctrl_c()


def test_nothing_changes_off_the_main_thread_or_outside_a_guard():
    seen = []

    def worker():
        with interrupts.guard(), interrupts.interruptible(), interrupts.deferred():
            interrupts.check()
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]
    with interrupts.deferred(), pytest.raises(KeyboardInterrupt):
        ctrl_c()  # no guard: as plain Python


def test_ctrl_c_during_a_trials_storage_write_lets_it_finish(tmp_path, monkeypatch):
    """The signal lands while the driver records trial 2's end: the record is written whole (COMPLETE in
    Optuna, a nested run in MLflow), then the search stops: no trial left RUNNING, the parent run KILLED."""
    original = TrialBook.finish

    def finish(self, trial, *args, **kwargs):
        if trial.number == 2:
            ctrl_c()  # without the deferral KeyboardInterrupt is raised here, before anything is recorded
        return original(self, trial, *args, **kwargs)

    monkeypatch.setattr(TrialBook, "finish", finish)
    config = make_config(tmp_path, budget={"n_trials": 20})
    with pytest.raises(KeyboardInterrupt):
        run_search(config, show_progress=False)
    trials = stored_trials(config)
    assert [t.state.name for t in trials[:3]] == ["COMPLETE"] * 3
    assert not [t for t in trials if t.state.name == "RUNNING"] and len(trials) < 20
    parent, kids = children(config.tracking.uri)
    assert parent.info.status == "KILLED"
    assert sorted(int(k.data.tags["autocompress.trial_number"]) for k in kids) == \
        [t.number for t in trials if t.state.is_finished()]


def test_ctrl_c_at_the_terminal_stops_the_search_and_the_writer_process(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it, once 10 plans are written: exit 130, no
    traceback from any process, every finished trial in MLflow, the parent run KILLED."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps({
        "model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
        "space": {"share": "layer", "quantize": {"bits": [2, 4, 8, None]}}, "budget": {"n_trials": 5000},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "writer": "process"},
        "run_dir": str(tmp_path / "run"), "study_name": "ctrl-c"}))
    proc = subprocess.Popen([sys.executable, "-m", "autocompress.cli", "search", str(config), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    plans, deadline = tmp_path / "run" / "plans", time.monotonic() + 120
    while time.monotonic() < deadline and (not plans.exists() or len(os.listdir(plans)) < 10):
        time.sleep(0.1)  # (files only: opening the study from here could race its creation)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # where it hangs: faulthandler prints every thread on SIGABRT
        os.killpg(proc.pid, signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"no exit within 120 s of Ctrl-C; the threads:\n{err[-6000:]}")
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    import optuna

    trials = optuna.load_study(study_name="ctrl-c", storage=f"sqlite:///{tmp_path}/run/optuna.db").trials
    assert not [t for t in trials if t.state.name == "RUNNING"]
    finished = [t.number for t in trials if t.state.is_finished()]
    assert len(finished) >= 9  # (the one running at the signal ends FAIL: counted as finished)
    parent, kids = children(f"sqlite:///{tmp_path}/mlflow.db", "ctrl-c")
    assert parent.info.status == "KILLED"
    assert sorted(int(k.data.tags["autocompress.trial_number"]) for k in kids) == finished
