"""One child process that holds a `TrialRunner`: what the local backend runs trials in when they have a time
limit (`budget.trial_timeout_s`), because a hung trial can only be stopped by killing its process.

The child is a fresh interpreter (`python -m autocompress.search.workers.child_process FD`: no fork of a process
holding torch threads or a Ray client, and unlike multiprocessing's "spawn" it never re-imports the
caller's main module, so a script calling `run_search` needs no `if __name__ == "__main__"` guard). It gets
the config over a socket pair, loads the model once, then answers (number, attempt, plan JSON) requests one
at a time (with the number of its companion trial in the pruning study, or None). It exits when the socket closes, so it does not outlive a driver that dies.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any

from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.search.workers.runner import TrialOutcome


class WorkerLost(RuntimeError):
    """The child process died (killed, crashed) while holding a trial."""


class ProcessWorker:
    """A started child process. `ready()` waits for its model; `send` one plan; `poll` for its outcome."""

    def __init__(self, config: SearchConfig) -> None:
        self.conn, child = multiprocessing.Pipe()
        fd = child.fileno()
        self.process = subprocess.Popen([sys.executable, "-m", "autocompress.search.workers.child_process", str(fd)],
                                        pass_fds=[fd], stdin=subprocess.DEVNULL)
        child.close()
        self.conn.send(config)

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready(self) -> Any:
        """The model's `ModelInfo` once the child has loaded it. Raises `UserError` for bad input found while
        loading (as the in-process runner would) and `WorkerLost` if the child died."""
        kind, payload = self._recv()
        if kind == "user_error":
            raise UserError(payload)
        if kind == "error":
            raise WorkerLost(f"the trial worker process could not start: {payload}")
        return payload

    def send(self, number: int, attempt: int, plan_json: str, pruning: int | None = None) -> None:
        self.conn.send((number, attempt, plan_json, pruning))

    def poll(self, timeout: float | None) -> TrialOutcome | None:
        """The outcome of the plan sent, waiting at most `timeout` seconds (None: until it comes); None if
        it has not come in time. Raises `WorkerLost` if the child died."""
        if not self.conn.poll(timeout):
            if self.process.poll() is not None:
                raise WorkerLost(self._death())
            return None
        _kind, outcome = self._recv()
        return outcome

    def kill(self) -> None:
        """SIGKILL the child and reap it (a hung trial ignores anything gentler)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.conn.close()

    def _recv(self) -> tuple[str, Any]:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            raise WorkerLost(self._death()) from None

    def _death(self) -> str:
        code = self.process.poll()
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"the local trial worker process (pid {self.process.pid}) died: {how}"


def _serve(conn: Any) -> None:
    """The child's main loop: the config, then one plan at a time until the socket closes."""
    from autocompress.search.workers.runner import TrialRunner
    from autocompress.threads import torch_threads, trial_threads

    try:
        config = conn.recv()
    except (EOFError, OSError):
        return
    try:
        runner = TrialRunner(config)
    except UserError as exc:
        conn.send(("user_error", str(exc)))
        return
    except Exception as exc:  # reported to the driver, which stops the search with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("info", runner.info))
    while True:
        try:
            number, attempt, plan_json, pruning = conn.recv()
        except (EOFError, OSError):  # the driver closed the pipe or died
            return
        with torch_threads(trial_threads(config.backend.cpus_per_trial)):
            outcome = runner.run(plan_json, number=number, attempt=attempt, pruning=pruning)
        conn.send(("outcome", outcome))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
