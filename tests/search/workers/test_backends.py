"""workers/backends.py: the Ray backend keeps one plan waiting per actor and sends it the moment the actor is free,
before the driver has told Optuna about the trial that just ended."""

from __future__ import annotations

from autocompress.config import SearchConfig
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.search.workers.ray_backend import RayBackend


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


def test_local_trials_run_with_cpus_per_trial_torch_threads(tmp_path):
    import torch

    from autocompress.search.workers.backends import LocalBackend

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # in this process, and (with a trial time limit) in the child process that runs the trials
        for cpus, inside, limit in ((1.0, 1, None), (3.5, 3, None), (0.5, 1, None), (1.0, 1, 600)):
            config = SearchConfig.from_dict({
                "model": {"name": "random:bert"}, "data": {"calibration": {"n": 4}, "evaluation": {"n": 8}},
                "space": {"quantize": {"bits": [4, 8]}}, "backend": {"cpus_per_trial": cpus},
                "budget": {"n_trials": 1, "trial_timeout_s": limit},
                "tracking": {"uri": "none"}, "run_dir": str(tmp_path / "run")}).resolved(tmp_path)
            backend = LocalBackend(config)
            try:
                info = backend.start()
                plan = CompressionPlan({n: LayerPlan(bits=4) for n in info.targets_by_default()})
                backend.submit(0, plan.to_json(indent=None))
                [(number, outcome)] = backend.collect()
                assert number == 0 and outcome.error is None
                assert outcome.torch_threads == inside  # counted inside the trial
                assert torch.get_num_threads() == 2  # and the driver's own count is back
            finally:
                backend.close()
    finally:
        torch.set_num_threads(before)
