"""One real TrialRunner shared by every search a benchmark runs in its process, with each distinct plan evaluated
once (benchmarks/sensitivity_seeding.py, benchmarks/search_quality.py).

Speed-up, not a change of results: the local backend builds its `TrialRunner(config)` per search; patched
with `shared_runner()`, every search of the process gets the one `SharedRunner` (the model and data are loaded
once), and a plan JSON evaluated before returns its recorded outcome instead of being evaluated again. RTN,
magnitude pruning, SVD low rank and the evaluation are deterministic on the CPU (the same plan gives
bit-identical metrics), so the metrics are exactly what a fresh evaluation gives; only wall time differs.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager


class SharedRunner:
    """Stands in for `TrialRunner(config)` in the local backend: one real TrialRunner for every run (same
    model and data), and the outcome of each distinct plan JSON kept and returned again (see the module
    docstring). `miss_s` holds the wall seconds of every real evaluation."""

    def __init__(self) -> None:
        self.runner, self.key, self.memo = None, None, {}
        self.hits, self.miss_s = 0, []

    def __call__(self, config):
        from autocompress.search.workers.runner import TrialRunner

        key = json.dumps([config.model.model_dump(mode="json"), config.data.model_dump(mode="json")])
        if self.runner is None:
            self.runner, self.key = TrialRunner(config), key
        if key != self.key:
            raise RuntimeError("SharedRunner serves one model and data set only")
        return self

    @property
    def info(self):
        return self.runner.info

    def run(self, plan_json: str, *args, **kwargs):
        if plan_json in self.memo:
            self.hits += 1
            return copy.deepcopy(self.memo[plan_json])
        start = time.perf_counter()
        outcome = self.runner.run(plan_json, *args, **kwargs)
        self.miss_s.append(time.perf_counter() - start)
        if outcome.error is None:
            self.memo[plan_json] = copy.deepcopy(outcome)
        return outcome


@contextmanager
def shared_runner():
    from autocompress.search.workers import backends

    shared, original = SharedRunner(), backends.TrialRunner
    backends.TrialRunner = shared
    try:
        yield shared
    finally:
        backends.TrialRunner = original
