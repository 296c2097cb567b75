"""A search worker runs a plan's KV cache, with and without a pruner (the pruner's path rebuilds the plan without
its distillation and must keep the cache)."""

from __future__ import annotations

import optuna

from autocompress.kvcache.plan import KVCachePlan
from autocompress.plan import CompressionPlan
from autocompress.search.early_stopping import SUFFIX
from autocompress.search.workers.runner import TrialRunner
from tests.support import make_config


def test_the_worker_evaluates_with_the_quantized_cache(tmp_path):
    config = make_config(tmp_path, model={"name": "random:llama", "task": "causal-lm"},
                         data={"calibration": {"n": 4}, "evaluation": {"n": 8}, "max_length": 24},
                         space={"kv_cache": {"bits": [16, 2]}}, objectives=["minimize kl", "minimize size_mb"],
                         pruner={"name": "median", "n_startup_trials": 5})
    (tmp_path / "run").mkdir()
    study = optuna.create_study(study_name=config.study_name + SUFFIX, storage=config.storage, direction="minimize")
    runner = TrialRunner(config)
    plan = CompressionPlan({}, kv_cache=KVCachePlan(bits=2)).to_json()
    plain = runner.run(plan, number=0)
    pruned_path = runner.run(plan, number=1, pruning=study.ask().number)
    assert plain.error is None and pruned_path.error is None and pruned_path.pruned is None
    assert plain.metrics["kl"] > 0 and pruned_path.metrics["kl"] == plain.metrics["kl"]
    assert runner.run(CompressionPlan({}).to_json(), number=2).metrics["kl"] == 0.0  # put back: no cache left
