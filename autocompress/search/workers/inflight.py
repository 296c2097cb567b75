"""The bookkeeping of trials on worker processes: when each attempt started, how often a trial was retried,
and what ends it. Shared by the backends whose workers can be killed (Ray actors, the local child process).

Rules (the contract the driver relies on):
  - a trial whose worker dies is started again, with the same plan, on a new worker, up to `max_retries`
    times; the next death ends it as FAIL "worker lost N times: <why>" (no retry for a hung trial);
  - a trial attempt running longer than `timeout_s` (counted from when it was sent to a ready worker) ends
    as FAIL "timed out after N s"; the backend kills and replaces its worker;
  - the outcome of a retried trial carries `retries` and `retry_reasons`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from autocompress.search.workers.runner import TrialOutcome


@dataclass
class Attempt:
    """One trial on one worker."""

    number: int
    plan_json: str
    worker: Any
    attempt: int = 0
    started: float = field(default_factory=time.monotonic)
    reasons: list[str] = field(default_factory=list)


class InFlight:
    """Trials running on workers, keyed by whatever handle the backend waits on (an ObjectRef, a number)."""

    def __init__(self, timeout_s: float | None, max_retries: int) -> None:
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.entries: dict[Any, Attempt] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, key: Any, entry: Attempt) -> None:
        entry.started = time.monotonic()
        self.entries[key] = entry

    def pop(self, key: Any) -> Attempt:
        return self.entries.pop(key)

    def wait_s(self) -> float | None:
        """Seconds until the first attempt runs out of time (0 if one already has); None without a timeout."""
        if self.timeout_s is None or not self.entries:
            return None
        first = min(e.started for e in self.entries.values())
        return max(0.0, first + self.timeout_s - time.monotonic())

    def overdue(self) -> list[Any]:
        """Keys of the attempts that have run longer than the timeout."""
        if self.timeout_s is None:
            return []
        now = time.monotonic()
        return [k for k, e in self.entries.items() if now - e.started > self.timeout_s]

    def timed_out(self, entry: Attempt) -> TrialOutcome:
        return self.finished(entry, TrialOutcome(error=f"timed out after {self.timeout_s:g} s (budget.trial_timeout_s);"
                                                       " its worker was killed and replaced"))

    def lost(self, entry: Attempt, why: str) -> TrialOutcome | None:
        """The worker running `entry` died of `why`: None when the trial should be retried (its attempt count
        is raised; the caller sends it to a new worker), else the FAIL outcome."""
        entry.reasons.append(why)
        if entry.attempt < self.max_retries:
            entry.attempt += 1
            return None
        times = "once" if len(entry.reasons) == 1 else f"{len(entry.reasons)} times"
        return self.finished(entry, TrialOutcome(error=f"worker lost {times} (backend.max_retries="
                                                       f"{self.max_retries}): {why}"))

    @staticmethod
    def finished(entry: Attempt, outcome: TrialOutcome) -> TrialOutcome:
        """`outcome` with the retry history of `entry` attached."""
        outcome.retries = entry.attempt
        outcome.retry_reasons = list(entry.reasons[:entry.attempt])
        return outcome
