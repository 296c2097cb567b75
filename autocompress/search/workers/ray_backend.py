"""The Ray backend: trials on Ray actors, each holding a `TrialRunner` (the `Backend` contract of backends.py).

Faults follow workers/inflight.py: an actor that dies mid-trial is replaced and the trial retried on the new
one (`backend.max_retries`); a trial over `budget.trial_timeout_s` ends as an error outcome and its actor is
killed and replaced; the search goes on with fewer workers when no replacement starts.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from typing import Any

from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.search.workers.inflight import Attempt, InFlight
from autocompress.search.workers.runner import TrialOutcome, TrialRunner
from autocompress.threads import trial_threads

READY_TIMEOUT_S = 600  # the longest a replacement worker may take to load the model


class RayBackend:
    """Runs trials on Ray actors, each holding a `TrialRunner` (model and data loaded once per actor).

    `backend.address` None starts an embedded local cluster (`ray.init()`); "auto" or "ray://host:port" joins
    an existing one. Each actor reserves `cpus_per_trial` CPUs and `gpus_per_trial` (fractional) GPUs.

    Capacity is two trials per actor: one running on it, one waiting here (not in Ray) for the first actor to
    come free. `collect` sends the waiting plans to free actors before it returns, so a worker starts its next
    trial while the driver is still telling Optuna and asking for the plan after that. A waiting trial's time
    limit starts when it is sent; only sent trials can be lost with a worker.
    """

    name = "ray"

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.actors: list[Any] = []
        self.idle: list[Any] = []
        self.flight = InFlight(config.budget.trial_timeout_s, config.backend.max_retries)  # keyed by ObjectRef
        self.pruning: dict[int, int | None] = {}  # trial number -> companion trial number
        self.waiting: deque[tuple[int, str]] = deque()  # (number, plan JSON) submitted, no actor free yet
        self._started_ray = False

    @property
    def capacity(self) -> int:
        return 2 * len(self.actors)

    @property
    def workers(self) -> int:
        return len(self.actors)

    def _actor_class(self) -> Any:
        import ray

        b = self.config.backend
        return ray.remote(num_cpus=b.cpus_per_trial, num_gpus=b.gpus_per_trial, max_restarts=0)(_TrialActor)

    def start(self) -> Any:
        import ray

        b = self.config.backend
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          configure_logging=True, logging_level="ERROR")
            if b.address:
                kwargs["address"] = b.address
            else:
                kwargs["num_cpus"] = max(os.cpu_count() or 1, int(b.workers * b.cpus_per_trial + 0.999))
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise UserError(f"backend.address {b.address!r}: no Ray cluster there ({exc}); start one with "
                                "`ray start --head` or leave address empty for a local cluster") from None
            except Exception as exc:
                if type(exc).__name__ != "AuthenticationError":
                    raise
                raise UserError(f"backend.address {b.address!r}: the cluster wants its auth token; set "
                                "RAY_AUTH_MODE=token and make the token available (~/.ray/auth_token on this "
                                "machine, or RAY_AUTH_TOKEN)") from None
            self._started_ray = True
        cls = self._actor_class()
        self.actors = [cls.remote(self.config) for _ in range(b.workers)]
        try:  # every actor ready before the first trial, so a trial's time limit never counts a model load
            info = ray.get([a.info.remote() for a in self.actors], timeout=READY_TIMEOUT_S)[0]
        except ray.exceptions.RayActorError as exc:
            cause = exc.__cause__ or exc
            raise UserError(f"the Ray workers could not load the model: {cause}") from None
        except ray.exceptions.GetTimeoutError:
            raise UserError(f"backend.workers: {b.workers} Ray workers did not all start within {READY_TIMEOUT_S} s "
                            "(the cluster may lack the CPUs/GPUs asked for); lower backend.workers or "
                            "cpus_per_trial / gpus_per_trial") from None
        self.idle = list(self.actors)
        return info

    def submit(self, number: int, plan_json: str, pruning: int | None = None) -> None:
        self.pruning[number] = pruning
        self.waiting.append((number, plan_json))
        self._dispatch()

    def _dispatch(self) -> None:
        """Send waiting plans, oldest first, to free actors."""
        while self.waiting and self.idle:
            number, plan_json = self.waiting.popleft()
            self._send(Attempt(number, plan_json, worker=self.idle.pop()))

    def _send(self, entry: Attempt) -> None:
        pruning = self.pruning.get(entry.number)
        self.flight.add(entry.worker.run.remote(entry.plan_json, entry.number, entry.attempt, pruning), entry)

    def in_flight(self) -> int:
        return len(self.flight) + len(self.waiting)

    def collect(self) -> list[tuple[int, TrialOutcome]]:
        import ray

        E = ray.exceptions
        out: list[tuple[int, TrialOutcome]] = []
        self._dispatch()
        while self.flight and not out:
            done, _ = ray.wait(list(self.flight.entries), num_returns=1, timeout=self.flight.wait_s())
            for ref in done:
                entry = self.flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except E.OutOfMemoryError as exc:  # Ray's memory monitor killed the worker: a retry would too
                    self._replace(entry.worker)
                    out.append((entry.number, InFlight.finished(entry, TrialOutcome(error=f"out of memory: {_line(exc)}"))))
                except (E.RayActorError, E.WorkerCrashedError, E.NodeDiedError, E.ObjectLostError) as exc:
                    fresh = self._replace(entry.worker)
                    failed = self.flight.lost(entry, f"{type(exc).__name__}: {_line(exc)}")
                    if failed is None and fresh is not None:  # the same plan, on the new worker
                        self.idle.remove(fresh)
                        entry.worker = fresh
                        self._send(entry)
                        continue
                    out.append((entry.number, failed or InFlight.finished(entry, TrialOutcome(
                        error=f"worker lost and no new worker started: {_line(exc)}"))))
                except E.RayError as exc:
                    self._replace(entry.worker)
                    out.append((entry.number, InFlight.finished(entry, TrialOutcome(
                        error=f"{type(exc).__name__}: {_line(exc)}"))))
                else:
                    self.idle.append(entry.worker)
                    out.append((entry.number, InFlight.finished(entry, outcome)))
            for ref in self.flight.overdue():
                entry = self.flight.pop(ref)
                self._replace(entry.worker)
                out.append((entry.number, self.flight.timed_out(entry)))
            self._dispatch()  # before the driver's bookkeeping of `out`: free workers start at once
        return out

    def _replace(self, dead: Any) -> Any:
        """Kill `dead` (a hung or lost actor) and start a fresh one; returns it once it has loaded the model,
        idle, or None (with a warning) if it could not start. Raises RuntimeError when no worker is left."""
        import ray

        self.actors.remove(dead)
        ray.kill(dead, no_restart=True)
        fresh = self._actor_class().remote(self.config)
        try:
            ray.get(fresh.info.remote(), timeout=READY_TIMEOUT_S)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            ray.kill(fresh, no_restart=True)
            warnings.warn(f"a replacement Ray worker did not start ({_line(exc)}); the search goes on with "
                          f"{len(self.actors)} workers", stacklevel=2)
            if not self.actors:
                raise RuntimeError(f"every Ray worker is lost and none can be started: {_line(exc)}") from None
            return None
        self.actors.append(fresh)
        self.idle.append(fresh)
        return fresh

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.idle, self.flight.entries, self.waiting = [], [], {}, deque()
        if self._started_ray:
            ray.shutdown()


def _line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (Ray's are long)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:500]


class _TrialActor:
    """The Ray actor body: one `TrialRunner` per actor process."""

    def __init__(self, config: SearchConfig) -> None:
        import torch

        torch.set_num_threads(trial_threads(config.backend.cpus_per_trial))
        self.runner = TrialRunner(config)

    def info(self) -> Any:
        return self.runner.info

    def run(self, plan_json: str, number: int | None = None, attempt: int = 0,
            pruning: int | None = None) -> TrialOutcome:
        return self.runner.run(plan_json, number=number, attempt=attempt, pruning=pruning)
