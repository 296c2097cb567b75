"""plan_size: the packed-format byte count, checked against hand computations and, where the policies
exist, against the parameter count of the real module surgery."""

from __future__ import annotations

import math

import pytest

from autocompress.errors import UserError
from autocompress.evaluators import EVALUATORS, SizeEvaluator, matrix_bytes, plan_size
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan

L0 = "encoder.layer.0."
Q = L0 + "attention.self.query"  # [64, 64] + bias
INTER = L0 + "intermediate.dense"  # [256, 64] + bias
OUT = L0 + "output.dense"  # [64, 256] + bias


@pytest.fixture(scope="module")
def bert():
    return load_model("random:bert")


@pytest.fixture(scope="module")
def info(bert):
    return bert.info


def size(info, layers):
    return plan_size(CompressionPlan(layers), info)


def test_empty_plan_is_the_original(info):
    r = size(info, {})
    assert r.total_bytes == r.original_bytes == info.total_params * info.dtype_bytes
    assert r.ratio == 1.0 and r.size_mb == r.total_bytes / 1e6
    assert r.per_layer["embeddings.word_embeddings"] == 30522 * 64 * 4  # a table is an entry of its own
    assert set(r.per_layer) == {*info.layers, *info.embeddings} and set(r.formats.values()) == {"dense"}
    assert sum(r.per_layer.values()) + r.other_bytes == r.total_bytes


def test_uniform_4bit_matches_hand_computation(info):
    plan = {n: LayerPlan(bits=4, group_size=128) for n in info.layers}
    r = size(info, plan)
    # OUT: 64x256 weights at 4 bits, ceil(256/128) = 2 fp16 scales per row, 64 fp32 biases
    assert r.per_layer[OUT] == 64 * 256 * 4 // 8 + 64 * 2 * 2 + 64 * 4
    # Q: one group per row (64 < 128)
    assert r.per_layer[Q] == 64 * 64 // 2 + 64 * 2 + 64 * 4
    assert sum(r.per_layer.values()) + r.other_bytes == r.total_bytes
    assert r.other_bytes == size(info, {}).other_bytes and r.ratio < 1.0
    per_channel = size(info, {OUT: LayerPlan(bits=4, group_size=None)})
    assert per_channel.per_layer[OUT] == 64 * 256 // 2 + 64 * 2 + 64 * 4


def test_asymmetric_adds_one_zero_point_per_group(info):
    sym = size(info, {OUT: LayerPlan(bits=3, group_size=128)}).per_layer[OUT]
    asym = size(info, {OUT: LayerPlan(bits=3, group_size=128, symmetric=False)}).per_layer[OUT]
    assert asym - sym == 64 * 2
    assert sym == math.ceil(64 * 256 * 3 / 8) + 64 * 2 * 2 + 64 * 4
    act = size(info, {OUT: LayerPlan(bits=3, group_size=128, act_bits=8)}).per_layer[OUT]
    assert act == sym  # act_bits changes nothing stored


def test_a_smoothed_layer_stores_its_vector_in_fp16(info):
    w8a8 = size(info, {OUT: LayerPlan(bits=8, group_size=None, act_bits=8)}).per_layer[OUT]
    smoothed = size(info, {OUT: LayerPlan(bits=8, group_size=None, act_bits=8, smooth=0.5)})
    assert smoothed.per_layer[OUT] - w8a8 == 256 * 2  # one fp16 value per input channel
    assert sum(smoothed.per_layer.values()) + smoothed.other_bytes == smoothed.total_bytes
    pruned = size(info, {OUT: LayerPlan(act_bits=8, smooth=0.5),
                         L0 + "intermediate": LayerPlan(sparsity=0.25, pattern="structured")})
    assert pruned.per_layer[OUT] == (64 * 192 + 64) * 4 + 192 * 2  # the vector of the pruned input width


def test_structured_removal_of_neurons_and_heads(info):
    base = size(info, {}).total_bytes
    neurons = size(info, {L0 + "intermediate": LayerPlan(sparsity=0.25, pattern="structured")})
    removed = 64 * (64 + 1) + 64 * 64  # 64 of 256 neurons: rows + biases of INTER, columns of OUT
    assert base - neurons.total_bytes == removed * 4
    assert neurons.per_layer[INTER] == 192 * 65 * 4 and neurons.per_layer[OUT] == (64 * 192 + 64) * 4
    heads = size(info, {L0 + "attention.self": LayerPlan(sparsity=0.25, pattern="structured")})
    assert base - heads.total_bytes == (3 * 16 * (64 + 1) + 64 * 16) * 4  # one head of 16: q, k, v rows + o columns
    keep_one = size(info, {L0 + "attention.self": LayerPlan(sparsity=0.95, pattern="structured")})
    assert keep_one.per_layer[Q] == 16 * 65 * 4


def test_structured_fused_qkv_gpt2():
    info = load_model("random:gpt2").info
    r = plan_size(CompressionPlan({"transformer.h.0.attn": LayerPlan(sparsity=0.25, pattern="structured")}), info)
    assert r.per_layer["transformer.h.0.attn.c_attn"] == (192 - 48) * 65 * 4
    assert r.per_layer["transformer.h.0.attn.c_proj"] == (64 * 48 + 64) * 4
    assert r.original_bytes - r.total_bytes == (48 * 65 + 64 * 16) * 4


def test_low_rank_counts(info):
    r = size(info, {Q: LayerPlan(rank=8)})
    assert r.per_layer[Q] == (8 * 64 + 64 * 8 + 64) * 4 and r.formats[Q] == "lowrank"
    assert size(info, {Q: LayerPlan(rank=0.25)}).per_layer[Q] == r.per_layer[Q] * 2 - 64 * 4
    q8 = size(info, {Q: LayerPlan(rank=8, bits=8, group_size=None)}).per_layer[Q]
    assert q8 == (8 * 64 + 8 * 2) + (64 * 8 + 64 * 2) + 64 * 4
    # the rank fraction is resolved on the shape left by structured pruning: 256 -> 26 neurons
    both = size(info, {L0 + "intermediate": LayerPlan(sparsity=0.9, pattern="structured"),
                       INTER: LayerPlan(rank=0.5)})
    assert both.per_layer[INTER] == (13 * 64 + 26 * 13 + 26) * 4


def test_n_m_counts(info):
    r = size(info, {Q: LayerPlan(pattern="2:4")})
    assert r.per_layer[Q] == 2048 * 4 + 2048 * 2 // 8 + 64 * 4 and r.formats[Q] == "2:4"
    q4 = size(info, {Q: LayerPlan(pattern="2:4", bits=4)})
    assert q4.per_layer[Q] == 2048 // 2 + 2048 * 2 // 8 + 64 * 2 + 64 * 4
    # a tail of cols % M stays dense: 2 rows x 10 cols, 2:4 -> 2*2*2 kept in blocks + 2*2 tail values
    assert matrix_bytes(2, 10, LayerPlan(pattern="2:4"), 4) == (12 * 4 + math.ceil(8 * 2 / 8), "2:4")
    # 7:8 at 2 bits costs more than dense (2 + 3 index bits per kept value): stored dense
    assert matrix_bytes(8, 64, LayerPlan(pattern="7:8", bits=2), 4) == matrix_bytes(8, 64, LayerPlan(bits=2), 4)


def test_unstructured_bitmask_or_dense(info):
    half = size(info, {Q: LayerPlan(sparsity=0.5)})
    assert half.per_layer[Q] == 2048 * 4 + 4096 // 8 + 64 * 4 and half.formats[Q] == "bitmask"
    low = size(info, {Q: LayerPlan(sparsity=0.1, bits=4)})  # 6 of 64 per row gone; a bitmask costs more
    assert low.formats[Q] == "dense"
    assert low.per_layer[Q] == size(info, {Q: LayerPlan(bits=4)}).per_layer[Q]
    fp = size(info, {Q: LayerPlan(sparsity=0.1)})  # at fp32 the 1-bit mask is cheap enough
    assert fp.per_layer[Q] == (4096 - 6 * 64) * 4 + 512 + 64 * 4 and fp.formats[Q] == "bitmask"


def test_mixed_plan_per_layer_sums_to_total(info):
    plan = {L0 + "intermediate": LayerPlan(sparsity=0.5, pattern="structured"), INTER: LayerPlan(bits=4),
            OUT: LayerPlan(sparsity=0.5, bits=8, symmetric=False), Q: LayerPlan(rank=0.5, bits=6),
            "encoder.layer.1.attention.self.key": LayerPlan(pattern="2:4", bits=4, group_size=32)}
    r = size(info, plan)
    assert sum(r.per_layer.values()) + r.other_bytes == r.total_bytes
    assert 0 < r.ratio < 1 and r.ratio == r.total_bytes / r.original_bytes


def test_bad_plan_and_evaluator(info):
    with pytest.raises(UserError):
        size(info, {"encoder.layer.9.nothing": LayerPlan(bits=4)})
    ev = EVALUATORS.get("size")(info)
    assert isinstance(ev, SizeEvaluator) and not ev.needs_model
    got = ev.evaluate_plan(CompressionPlan({Q: LayerPlan(bits=4)}))
    report = size(info, {Q: LayerPlan(bits=4)})
    assert got == {"size_mb": report.size_mb, "size_ratio": report.ratio}
    assert ev.better("size_mb") == "lower"


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("spec,plan", [
    ("random:bert", {L0 + "intermediate": LayerPlan(sparsity=0.3, pattern="structured"),
                     "encoder.layer.1.attention.self": LayerPlan(sparsity=0.5, pattern="structured")}),
    ("random:gpt2", {"transformer.h.0.attn": LayerPlan(sparsity=0.25, pattern="structured"),
                     "transformer.h.1.mlp": LayerPlan(sparsity=0.6, pattern="structured")}),
])
def test_structured_size_matches_module_surgery(spec, plan):
    structured = pytest.importorskip("autocompress.policies.structured")
    if not hasattr(structured, "prune_units"):
        pytest.skip("autocompress.policies.structured has no prune_units yet")
    lm = load_model(spec)
    plan = CompressionPlan(plan)
    expected = plan_size(plan, lm.info)
    structured.StructuredPolicy().apply(lm.model, plan, None)
    assert _param_bytes(lm.model) == expected.total_bytes


def test_low_rank_size_matches_module_surgery(bert):
    lowrank = pytest.importorskip("autocompress.policies.lowrank")
    policy = getattr(lowrank, "LowRankPolicy", None)
    if policy is None:
        pytest.skip("autocompress.policies.lowrank has no LowRankPolicy yet")
    lm = load_model("random:bert")
    plan = CompressionPlan({Q: LayerPlan(rank=0.25), INTER: LayerPlan(rank=5)})
    policy().apply(lm.model, plan, None)
    assert _param_bytes(lm.model) == plan_size(plan, lm.info).total_bytes


def test_embedding_table_counts_like_a_dense_matrix(info):
    word = "embeddings.word_embeddings"  # [30522, 64]
    r = size(info, {word: LayerPlan(bits=4, group_size=32)})
    assert r.per_layer[word] == 30522 * 64 // 2 + 30522 * 2 * 2  # 4-bit values + 2 fp16 scales per token
    assert r.total_bytes == r.original_bytes - 30522 * 64 * 4 + r.per_layer[word] and r.formats[word] == "dense"


def test_tied_table_is_counted_once_as_its_linear():
    gpt2 = load_model("random:gpt2").info
    r = size(gpt2, {"lm_head": LayerPlan(bits=8, group_size=None)})
    assert "transformer.wte" not in r.per_layer and r.per_layer["lm_head"] == 30522 * 64 + 30522 * 2
    assert r.total_bytes == r.original_bytes - 30522 * 64 * 4 + r.per_layer["lm_head"]


def test_a_tied_table_chosen_in_space_embeddings_is_counted_once_at_its_bits():
    """random:llama-tied: model.embed_tokens is lm_head's weight. space.embeddings decides it as the table and
    puts the entry on lm_head; the shared [30522, 64] weight is counted once, at those bits."""
    from autocompress.config import SpaceSection
    from autocompress.spaces import ConfigSpace

    info = load_model("random:llama-tied").info
    cs = ConfigSpace(SpaceSection.model_validate({"embeddings": {"bits": [4, None], "group_size": [32]}}), info)
    plan = cs.plan_from_params({"model.embed_tokens.bits": 4})
    r = plan_size(plan, info)
    head = 30522 * 64 // 2 + 30522 * 2 * 2  # 4-bit values + 2 fp16 scales per row (hidden 64, groups of 32)
    assert set(plan.layers) == {"lm_head"} and r.per_layer["lm_head"] == head
    assert "model.embed_tokens" not in r.per_layer
    assert r.total_bytes == r.original_bytes - 30522 * 64 * 4 + head  # no second copy of the table anywhere


# ---- memory at deployment: packed weights + KV cache -------------------------------------------------


def test_memory_of_a_causal_lm_is_weights_plus_kv_cache():
    from autocompress.evaluators.size import kv_cache_values, plan_memory

    for kind in ("llama", "gpt2"):
        info = load_model(f"random:{kind}").info
        assert info.extra["num_kv_heads"] == 4 and info.extra["head_dim"] == 16 and info.extra["num_blocks"] == 2
        plan = CompressionPlan({n: LayerPlan(bits=4) for n in info.targets_by_default()})
        r = plan_memory(plan, info, batch=2, seq_len=128, dtype="fp32")
        # 2 (key, value) x 2 blocks x 4 kv heads x 16 head_dim per position; 2 x 128 positions; 4 bytes each
        assert kv_cache_values(plan, info, 2, 128) == 2 * 2 * 4 * 16 * 2 * 128
        assert r.kv_cache_bytes == 2 * 2 * 4 * 16 * 2 * 128 * 4
        assert r.weights_bytes == plan_size(plan, info).total_bytes
        assert r.memory_mb == pytest.approx((r.weights_bytes + r.kv_cache_bytes) / 1e6)
        assert plan_memory(plan, info, 2, 128, "bf16").kv_cache_bytes == r.kv_cache_bytes // 2


def test_memory_of_grouped_query_attention_counts_the_kv_heads():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from autocompress.evaluators.size import plan_memory
    from autocompress.models import inspect_model

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         num_hidden_layers=3, intermediate_size=128, vocab_size=1000)
    with torch.device("meta"):
        info = inspect_model(LlamaForCausalLM(config), task="causal-lm")
    assert info.extra["num_kv_heads"] == 2 and info.extra["head_dim"] == 16
    r = plan_memory(CompressionPlan({}), info, batch=1, seq_len=1000, dtype="fp32")
    assert r.kv_cache_bytes == 2 * 3 * 2 * 16 * 1000 * 4


def test_memory_counts_the_heads_structured_pruning_keeps():
    from autocompress.evaluators.size import plan_memory

    info = load_model("random:gpt2").info
    heads = [s for s in info.structures.values() if s.kind == "heads"]
    plan = CompressionPlan({heads[0].name: LayerPlan(sparsity=0.5, pattern="structured")})
    r = plan_memory(plan, info, batch=1, seq_len=10, dtype="fp32")
    assert r.kv_cache_bytes == 2 * (2 + 4) * 16 * 10 * 4  # block 0 keeps 2 of its 4 heads


def test_memory_of_an_encoder_is_the_weights_alone(info):
    from autocompress.evaluators.size import plan_memory

    assert info.extra["num_kv_heads"] is None
    plan = CompressionPlan({Q: LayerPlan(bits=4)})
    r = plan_memory(plan, info, batch=8, seq_len=512, dtype="fp32")
    assert r.kv_cache_bytes == 0 and r.weights_bytes == plan_size(plan, info).total_bytes
