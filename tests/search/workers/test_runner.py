"""TrialRunner for a causal LM: the next-token evaluator (KL, top-1 agreement and perplexity in one pass) on
the evaluation texts, and on their subset for the pruner."""

from __future__ import annotations

from pathlib import Path

from autocompress.config import SearchConfig
from autocompress.evaluators.next_token import NextTokenEvaluator
from autocompress.plan import CompressionPlan
from autocompress.search.workers.runner import TrialRunner

NEXT_TOKEN = {"kl", "kl_p99", "top1_agreement", "perplexity", "nll", "perplexity_ratio"}


def make_config(tmp_path: Path, **extra) -> SearchConfig:
    data = {"model": {"name": "random:llama"},
            "data": {"calibration": {"n": 8}, "evaluation": {"source": "python-docs", "n": 12}, "max_length": 48,
                     "batch_size": 4},
            "space": {"quantize": {"bits": [4, 8], "group_size": [16]}}, "objectives": ["minimize kl",
                                                                                      "minimize size_mb"],
            "tracking": {"uri": "none"}, "run_dir": str(tmp_path / "run"), "study_name": "tiny"}
    data.update(extra)
    return SearchConfig.from_dict(data).resolved(tmp_path)


def plan(runner: TrialRunner, bits: int | None) -> str:
    layers = {} if bits is None else {n: {"bits": bits, "group_size": 16} for n in runner.info.layers}
    return CompressionPlan.from_dict({"version": 1, "layers": layers}).to_json()


def test_causal_lm_trials_report_next_token_metrics(tmp_path):
    runner = TrialRunner(make_config(tmp_path))
    assert isinstance(runner.evaluator, NextTokenEvaluator) and runner.subset_evaluator is None
    assert len(runner.evaluator.batches) == 3  # 12 python-docs passages, 4 a batch
    unchanged, eight, two = (runner.run(plan(runner, bits)) for bits in (None, 8, 2))
    for outcome in (unchanged, eight, two):
        assert outcome.error is None and set(outcome.metrics) == NEXT_TOKEN
    assert unchanged.metrics["kl"] == 0.0 and unchanged.metrics["top1_agreement"] == 1.0
    assert 0 < eight.metrics["kl"] < two.metrics["kl"]
    assert eight.metrics["top1_agreement"] > two.metrics["top1_agreement"]


def test_the_pruner_subset_uses_the_next_token_evaluator_too(tmp_path):
    runner = TrialRunner(make_config(tmp_path, pruner={"name": "median", "subset": 0.25}))
    sub = runner.subset_evaluator
    assert isinstance(sub, NextTokenEvaluator) and len(sub.batches) == 2  # the first 8 of 12 texts (at least 8)
    assert len(sub.reference) < len(runner.evaluator.reference)


def test_size_coded_mb_is_measured_on_the_compressed_model_when_a_search_uses_it(tmp_path):
    from autocompress.evaluators.size import plan_size

    runner = TrialRunner(make_config(tmp_path, objectives=["minimize kl", "minimize size_coded_mb"]))
    assert runner.coded
    outcome = runner.run(plan(runner, 4))
    assert outcome.error is None and set(outcome.metrics) == NEXT_TOKEN | {"size_coded_mb"}
    packed_mb = plan_size(CompressionPlan.from_json(plan(runner, 4)), runner.info).size_mb
    assert 0 < outcome.metrics["size_coded_mb"] < packed_mb  # the 4-bit codes shrink under zstd
    assert not TrialRunner(make_config(tmp_path)).coded  # not measured unless asked for
