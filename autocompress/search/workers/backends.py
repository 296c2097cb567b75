"""Where trials run. The driver submits (trial number, plan JSON) and collects `TrialOutcome`s.

Contract of a backend: `start()` returns the model's `ModelInfo` (taken by a worker, so the driver needs no
model of its own with Ray); `capacity` trials may be in flight at once; `submit(number, plan_json, pruning)`
never blocks (`pruning`: the companion trial's number in the pruning study, passed on to the worker); `collect`
returns at least one finished (number, outcome) pair when anything is in flight, waiting for it if need be;
`close()` releases the workers. A trial's own failure (an exception, NaN, running out of memory) arrives as
`outcome.error`. Faults of the worker processes follow workers/inflight.py: a worker that dies mid-trial is replaced
and the trial retried on the new one (`backend.max_retries`), a trial over `budget.trial_timeout_s` ends as
an error outcome and its worker is killed and replaced. Only processes can be killed, so the local backend
runs trials in a child process when a trial timeout is set, and in the driver process otherwise.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from autocompress.config import SearchConfig
from autocompress.search.workers.inflight import Attempt, InFlight
from autocompress.search.workers.runner import TrialOutcome, TrialRunner
from autocompress.threads import torch_threads, trial_threads


class Backend(Protocol):
    """The contract of the module docstring, as the driver and the sensitivity measurement use it."""

    @property
    def capacity(self) -> int: ...  # trials that may be in flight at once

    @property
    def workers(self) -> int: ...

    def start(self) -> Any: ...  # the model's ModelInfo

    def submit(self, number: int, plan_json: str, pruning: int | None = None) -> None: ...

    def in_flight(self) -> int: ...

    def collect(self) -> list[tuple[int, TrialOutcome]]: ...

    def close(self) -> None: ...


class LocalBackend:
    """Runs trials one at a time on this machine (no cluster; what tests and laptops use).

    Each trial runs with `backend.cpus_per_trial` torch threads (rounded down, at least 1), as a Ray actor does;
    the process's own count is restored after it. Without `budget.trial_timeout_s` the trials run in this
    process: nothing to start, nothing can stop a hung one. With it they run in one child process (workers/child_process.py) that is killed and replaced when a trial runs
    out of time, and replaced (the trial retried) when it dies mid-trial, as a Ray actor is.
    """

    name = "local"

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.runner: TrialRunner | None = None
        self.worker: Any = None  # the ProcessWorker when isolated
        self.isolated = config.budget.trial_timeout_s is not None
        self.queue: deque[tuple[int, str]] = deque()
        self.pruning: dict[int, int | None] = {}  # trial number -> companion trial number
        self.flight = InFlight(config.budget.trial_timeout_s, config.backend.max_retries)

    @property
    def capacity(self) -> int:
        return 1

    @property
    def workers(self) -> int:
        return 1

    def start(self) -> Any:
        if not self.isolated:
            self.runner = TrialRunner(self.config)
            return self.runner.info
        from autocompress.search.workers.child_process import ProcessWorker

        self.worker = ProcessWorker(self.config)
        return self.worker.ready()

    def submit(self, number: int, plan_json: str, pruning: int | None = None) -> None:
        self.pruning[number] = pruning
        self.queue.append((number, plan_json))

    def in_flight(self) -> int:
        return len(self.queue) + len(self.flight)

    def collect(self) -> list[tuple[int, TrialOutcome]]:
        if not self.isolated:
            if not self.queue:
                return []
            number, plan_json = self.queue.popleft()
            with torch_threads(trial_threads(self.config.backend.cpus_per_trial)):
                outcome = self.runner.run(plan_json, number=number, pruning=self.pruning.pop(number, None))
            return [(number, outcome)]
        from autocompress.search.workers.child_process import WorkerLost

        while True:
            if not self.flight:
                if not self.queue:
                    return []
                self._send(Attempt(*self.queue.popleft(), worker=self.worker))
            entry = next(iter(self.flight.entries.values()))
            try:
                outcome = self.worker.poll(self.flight.wait_s())
            except WorkerLost as exc:
                self.flight.pop(entry.number)
                self._restart()
                failed = self.flight.lost(entry, str(exc))
                if failed is None:
                    self._send(entry)
                    continue
                return [(entry.number, failed)]
            if outcome is not None:
                self.flight.pop(entry.number)
                self.pruning.pop(entry.number, None)
                return [(entry.number, InFlight.finished(entry, outcome))]
            if self.flight.overdue():
                self.flight.pop(entry.number)
                self._restart()
                return [(entry.number, self.flight.timed_out(entry))]

    def _send(self, entry: Attempt) -> None:
        entry.worker = self.worker
        self.worker.send(entry.number, entry.attempt, entry.plan_json, self.pruning.get(entry.number))
        self.flight.add(entry.number, entry)

    def _restart(self) -> None:
        """Kill the child process and start a new one; returns once it has loaded the model."""
        from autocompress.search.workers.child_process import ProcessWorker

        self.worker.kill()
        self.worker = ProcessWorker(self.config)
        self.worker.ready()

    def close(self) -> None:
        self.runner = None
        if self.worker is not None:
            self.worker.kill()
            self.worker = None


def make_backend(config: SearchConfig) -> Backend:
    """The backend `backend.name` names (not started)."""
    if config.backend.name == "ray":
        from autocompress.search.workers.ray_backend import RayBackend

        return RayBackend(config)
    return LocalBackend(config)
