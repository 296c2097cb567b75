"""The local backend's in-process worker: trials run one at a time on a daemon thread of the driver process,
so the driver tells Optuna, hands the trial to MLflow and asks for the next plan while a trial runs (torch
releases the GIL inside its kernels; the driver's own work is short Python and storage I/O).

Contract: `send(number, plan_json, pruning)` hands over a trial while the thread is idle; `wait()` blocks until
it finishes and returns (number, TrialOutcome). A `BaseException` the trial let through (KeyboardInterrupt from
the test hook, SystemExit) is raised again by `wait()` in the driver's thread, as if the trial had run there;
a Ctrl-C of the user reaches the driver's thread, which is the one waiting. The thread is a daemon: a driver
that stops mid-trial exits without waiting for the trial to end.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from autocompress.search.trial import TrialOutcome

POLL_S = 0.5  # wait() wakes this often, so signals reach the driver's thread on every platform


class ThreadWorker:
    """One daemon thread that runs `runner.run` for each trial sent to it."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.busy: int | None = None  # the trial number on the thread, or None when idle
        self._inbox: queue.Queue[tuple[int, str, int | None] | None] = queue.Queue()
        self._outbox: queue.Queue[tuple[int, TrialOutcome | None, BaseException | None]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="autocompress-trial", daemon=True)
        self._thread.start()

    def send(self, number: int, plan_json: str, pruning: int | None) -> None:
        if self.busy is not None:
            raise RuntimeError(f"trial {number} sent while trial {self.busy} runs")
        self.busy = number
        self._inbox.put((number, plan_json, pruning))

    def wait(self) -> tuple[int, TrialOutcome]:
        while True:
            try:
                number, outcome, raised = self._outbox.get(timeout=POLL_S)
                break
            except queue.Empty:
                continue
        self.busy = None
        if raised is not None:
            raise raised
        return number, outcome

    def close(self) -> None:
        """Let the thread end after its current trial (it is a daemon: nothing waits for it)."""
        self._inbox.put(None)

    def _loop(self) -> None:
        while (job := self._inbox.get()) is not None:
            number, plan_json, pruning = job
            try:
                self._outbox.put((number, self.runner.run(plan_json, number=number, pruning=pruning), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread, which raises it
                self._outbox.put((number, None, exc))
