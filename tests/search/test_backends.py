"""backends.py: the Ray backend keeps one plan waiting per actor and sends it the moment the actor is free,
before the driver has told Optuna about the trial that just ended."""

from __future__ import annotations

from autocompress.config import SearchConfig
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.search.backends import RayBackend


def test_ray_sends_the_waiting_plan_before_collect_returns(tmp_path):
    config = SearchConfig.from_dict({
        "model": {"name": "random:bert"}, "data": {"calibration": {"n": 4}, "evaluation": {"n": 8}},
        "space": {"quantize": {"bits": [4, 8]}}, "backend": {"name": "ray", "workers": 1},
        "tracking": {"uri": "none"}, "run_dir": str(tmp_path / "run")}).resolved(tmp_path)
    backend = RayBackend(config)
    try:
        info = backend.start()
        assert backend.capacity == 2 * backend.workers == 2
        plans = [CompressionPlan({n: LayerPlan(bits=b) for n in info.targets_by_default()}).to_json(indent=None)
                 for b in (4, 8, 3)]
        backend.submit(0, plans[0])
        backend.submit(1, plans[1])
        assert (len(backend.flight), len(backend.waiting), backend.in_flight()) == (1, 1, 2)
        done = backend.collect()
        assert [n for n, _ in done] == [0] and done[0][1].error is None
        # trial 1 is already on the worker: nothing waits for the driver's bookkeeping of trial 0
        assert (len(backend.flight), len(backend.waiting)) == (1, 0)
        assert [e.number for e in backend.flight.entries.values()] == [1]
        backend.submit(2, plans[2])
        finished = [n for _ in range(2) for n, o in backend.collect() if o.error is None]
        assert finished == [1, 2] and backend.in_flight() == 0
    finally:
        backend.close()
