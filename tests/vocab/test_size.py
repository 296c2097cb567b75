"""What the size, memory and latency models count for a pruned vocabulary: the kept rows plus the id map."""

from __future__ import annotations

import pytest

from autocompress.evaluators.latency._base import Workload, plan_ops
from autocompress.evaluators.size import plan_memory, plan_size
from autocompress.loading import meta_inventory
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.vocab.latency import logit_map_elements
from autocompress.vocab.plan import VocabPlan


@pytest.mark.parametrize("spec, tables", [("random:llama", ("model.embed_tokens", "lm_head")),
                                          ("random:llama-tied", ("lm_head",)),
                                          ("random:bert", ("embeddings.word_embeddings",))])
def test_size_counts_kept_rows_and_the_id_map(spec, tables):
    info = meta_inventory(spec)
    whole = plan_size(CompressionPlan({}), info)
    half = plan_size(CompressionPlan({}, vocab=VocabPlan(keep=0.5)), info)
    db = info.dtype_bytes
    dropped = (30522 - 15261) * 64 * db * len(tables)
    assert half.total_bytes == whole.total_bytes - dropped + 4 * 30522
    assert half.other_bytes == whole.other_bytes + 4 * 30522
    for name in tables:
        assert half.per_layer[name] == 15261 * 64 * db


def test_quantized_head_counts_its_kept_rows_at_its_bits():
    info = meta_inventory("random:llama")
    plan = CompressionPlan({"lm_head": LayerPlan(bits=4, group_size=32, symmetric=True)}, vocab=VocabPlan(keep=0.25))
    rows = round(0.25 * 30522)
    assert plan_size(plan, info).per_layer["lm_head"] == rows * (64 // 2 + 2 * 2)  # 4-bit values, 2 fp16 scales


def test_memory_is_the_smaller_weights_plus_the_same_cache():
    info = meta_inventory("random:llama")
    whole = plan_memory(CompressionPlan({}), info, 1, 128, "fp32")
    half = plan_memory(CompressionPlan({}, vocab=VocabPlan(keep=0.5)), info, 1, 128, "fp32")
    assert half.kv_cache_bytes == whole.kv_cache_bytes and half.weights_bytes < whole.weights_bytes


def test_latency_ops_use_the_kept_rows_and_map_the_logits_back():
    info = meta_inventory("random:llama")
    plan = CompressionPlan({}, vocab=VocabPlan(keep=0.5))
    for mode, positions in (("prefill", 2), ("decode", 2)):
        work = Workload(batch=2, seq_len=16, mode=mode)
        ops = {op.layer: op for op in plan_ops(plan, info, work)}
        assert ops["lm_head"].n == 15261
        assert ops["vocab.logit_map"].elements == 2.0 * positions * 30522 == logit_map_elements(plan, info, work)
    assert "vocab.logit_map" not in {op.layer for op in plan_ops(CompressionPlan({}), info, Workload())}
    bert = meta_inventory("random:bert")
    assert logit_map_elements(plan, bert, Workload()) == 0.0


def test_the_measured_model_has_the_kept_rows_and_original_logits():
    import torch

    from autocompress.evaluators.latency.kernels import build_real_model
    from autocompress.loading import load_model

    loaded = load_model("random:llama")
    plan = CompressionPlan({"lm_head": LayerPlan(bits=8, group_size=None)}, vocab=VocabPlan(keep=0.25))
    model = build_real_model(loaded.model, plan, "cpu")
    assert model.get_input_embeddings().num_embeddings == 7630
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 3000]])).logits.shape == (1, 3, 30522)
