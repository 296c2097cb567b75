"""`TrackerProcess`: a `Tracker` whose nested runs are logged by a child process (`tracking.writer: process`).

Why: logging one trial to MLflow is about 40 ms of Python on a local SQLite store (four client calls through
SQLAlchemy and the plan artifact; benchmarks/tracking_cost.py). On the writer thread (tracking/recorder.py) that time
is taken from the driver's interpreter, so a search of short trials (a GPU worker's tens of milliseconds) is
held to the driver's Optuna work *plus* MLflow's. In a child process MLflow's work runs beside the driver on
another core: the driver's writer thread only sends the trial and waits, holding no interpreter lock, for the
child's answer.

Contract: `TrackerProcess(tracker)` has the `Tracker` interface. `log_trial` runs in the child on its own
`MlflowClient` for the same parent run (same run layout, same keep-one-run-per-trial rule); every other method
(parent-run logging, `close`, `ui_hint`, `logged_trials`) runs on `tracker` here. An MLflow error in the child
is raised here as `TrackerProcessError` carrying the child's message, and so is a child that died or could not
start; the recorder treats both as "MLflow not now" (kept, tried again), and the next call starts a new child.
`close` (or `stop`) ends the child; a child whose parent dies reads end-of-file and exits. The child ignores
SIGINT: a Ctrl-C at the terminal stops the search in the parent, which still logs what it can through the child.
The MLFLOW_* environment of the calling thread (request timeout, retries) goes with each call.

Messages are pickled over the child's stdin and stdout: a private pipe between two processes of this package.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from autocompress.search.tracking.contract import TrialTracker

STOP_TIMEOUT_S = 10.0  # how long `stop` waits for the child to finish its call and exit before killing it


class TrackerProcessError(RuntimeError):
    """Logging in the child failed (the MLflow error's type and first line), or the child is gone."""


class TrackerProcess:
    """A `Tracker` (tracking/runs.py) whose `log_trial` runs in a child process; see the module docstring."""

    def __init__(self, tracker: TrialTracker) -> None:
        self.tracker = tracker
        self._proc: subprocess.Popen | None = None

    def __getattr__(self, name: str) -> Any:  # uri, parent_run_id, log_text, log_metrics, ui_hint, ...
        return getattr(self.tracker, name)

    def log_trial(self, number: int, *args: Any, **kwargs: Any) -> None:
        """`Tracker.log_trial`, done by the child; blocks until it answers. Raises `TrackerProcessError`."""
        if number in self.tracker._logged:
            return
        env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
        self._request(("log_trial", number, args, kwargs, env))
        self.tracker._logged.add(number)

    def close(self, status: str = "FINISHED") -> None:
        """End the child, then set the parent run's terminal status here (`Tracker.close`)."""
        self.stop()
        self.tracker.close(status)

    def stop(self) -> None:
        """End the child (after the call it is making, at most STOP_TIMEOUT_S); nothing when none runs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # end of file: the child returns from its loop
            proc.wait(STOP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()

    def _request(self, message: tuple) -> None:
        proc = self._start()
        try:
            pickle.dump(message, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            reply = pickle.load(proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self.stop()
            raise TrackerProcessError(f"the MLflow writer process ended ({type(exc).__name__}; exit code "
                                      f"{proc.poll()}; its own error, if any, is on this process's stderr)") from None
        if reply[0] != "ok":
            raise TrackerProcessError(reply[1])

    def _start(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self.stop()
        t = self.tracker
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3))  # this package's
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)  # (a checkout not installed)
        proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": path})
        self._proc = proc
        pickle.dump((t.uri, t.experiment_id, t.parent_run_id), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
        return proc


def _serve(inbox: BinaryIO, outbox: BinaryIO) -> None:
    """The child's loop: a Tracker on the parent's run; each message is one `log_trial`, answered
    ("ok",) or ("error", "Type: first line"); returns at end of file."""
    import logging

    import mlflow

    from autocompress.search.tracking.runs import Tracker, _env

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri, experiment_id, parent_run_id = pickle.load(inbox)
    tracker = Tracker(mlflow.MlflowClient(tracking_uri=uri), uri, experiment_id, parent_run_id)
    while True:
        try:
            _method, number, args, kwargs, env = pickle.load(inbox)
        except EOFError:
            return
        try:
            with _env(**env):
                tracker.log_trial(number, *args, **kwargs)
            reply: tuple = ("ok",)
        except Exception as exc:  # MlflowException, requests, sqlite: the parent decides what it means
            reply = ("error", f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}")
        pickle.dump(reply, outbox, protocol=pickle.HIGHEST_PROTOCOL)
        outbox.flush()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    _protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything MLflow prints must not reach the protocol pipe
    _serve(sys.stdin.buffer, _protocol_out)
