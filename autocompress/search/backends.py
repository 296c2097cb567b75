"""Where trials run. The driver submits (trial number, plan JSON) and collects `TrialOutcome`s.

Contract of a backend: `start()` returns the model's `ModelInfo` (taken by a worker, so the driver needs no
model of its own with Ray); `capacity` trials may be in flight at once; `submit` never blocks; `collect`
returns at least one finished (number, outcome) pair when anything is in flight, waiting for it if need be;
`close()` releases the workers. A trial's own failure arrives as `outcome.error`; a worker that dies
mid-trial arrives as an error outcome too, and the backend replaces the worker.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.search.trial import TrialOutcome, TrialRunner


class LocalBackend:
    """Runs trials one at a time in this process (no cluster; what tests and laptops use)."""

    name = "local"

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.runner: TrialRunner | None = None
        self.queue: deque[tuple[int, str]] = deque()

    @property
    def capacity(self) -> int:
        return 1

    @property
    def workers(self) -> int:
        return 1

    def start(self) -> Any:
        self.runner = TrialRunner(self.config)
        return self.runner.info

    def submit(self, number: int, plan_json: str) -> None:
        self.queue.append((number, plan_json))

    def in_flight(self) -> int:
        return len(self.queue)

    def collect(self) -> list[tuple[int, TrialOutcome]]:
        if not self.queue:
            return []
        number, plan_json = self.queue.popleft()
        return [(number, self.runner.run(plan_json))]

    def close(self) -> None:
        self.runner = None


class RayBackend:
    """Runs trials on Ray actors, each holding a `TrialRunner` (model and data loaded once per actor).

    `backend.address` None starts an embedded local cluster (`ray.init()`); "auto" or "ray://host:port" joins
    an existing one. Each actor reserves `cpus_per_trial` CPUs and `gpus_per_trial` (fractional) GPUs.
    """

    name = "ray"

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.actors: list[Any] = []
        self.idle: list[Any] = []
        self.pending: dict[Any, tuple[int, Any, str]] = {}  # ObjectRef -> (number, actor, plan_json)
        self._started_ray = False

    @property
    def capacity(self) -> int:
        return len(self.actors)

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
        try:
            info = ray.get(self.actors[0].info.remote())
        except ray.exceptions.RayActorError as exc:
            cause = exc.__cause__ or exc
            raise UserError(f"the Ray workers could not load the model: {cause}") from None
        self.idle = list(self.actors)
        return info

    def submit(self, number: int, plan_json: str) -> None:
        actor = self.idle.pop()
        self.pending[actor.run.remote(plan_json)] = (number, actor, plan_json)

    def in_flight(self) -> int:
        return len(self.pending)

    def collect(self) -> list[tuple[int, TrialOutcome]]:
        import ray

        if not self.pending:
            return []
        done, _ = ray.wait(list(self.pending), num_returns=1)
        out = []
        for ref in done:
            number, actor, _plan = self.pending.pop(ref)
            try:
                out.append((number, ray.get(ref)))
                self.idle.append(actor)
            except ray.exceptions.RayError as exc:  # the worker died: report, replace it
                out.append((number, TrialOutcome(error=f"worker lost: {type(exc).__name__}: {exc}".splitlines()[0])))
                self._replace(actor)
        return out

    def _replace(self, dead: Any) -> None:
        import ray

        self.actors.remove(dead)
        ray.kill(dead, no_restart=True)
        fresh = self._actor_class().remote(self.config)
        self.actors.append(fresh)
        self.idle.append(fresh)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.idle, self.pending = [], [], {}
        if self._started_ray:
            ray.shutdown()


class _TrialActor:
    """The Ray actor body: one `TrialRunner` per actor process."""

    def __init__(self, config: SearchConfig) -> None:
        import torch

        torch.set_num_threads(max(1, int(config.backend.cpus_per_trial)))
        self.runner = TrialRunner(config)

    def info(self) -> Any:
        return self.runner.info

    def run(self, plan_json: str) -> TrialOutcome:
        return self.runner.run(plan_json)


def make_backend(config: SearchConfig) -> LocalBackend | RayBackend:
    return {"local": LocalBackend, "ray": RayBackend}[config.backend.name](config)
