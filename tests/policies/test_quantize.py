import copy
import pickle

import pytest
import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.modules import LowRankLinear, set_module, weight_matrix
from autocompress.plan import QUANT_METHODS, CompressionPlan, LayerPlan
from autocompress.policies._base import POLICIES, Calibration
from autocompress.policies.quantize import (
    ACT_ATTR, QUANTIZERS, QuantizePolicy, act_quant_hook, dequantize, fake_quant_act_int8, quant_params,
    quantize_gptq, quantize_int, quantize_rtn, qrange,
)


def _groups(w, group_size):
    gs = w.shape[1] if group_size is None else group_size
    return [w[r, c:c + gs] for r in range(w.shape[0]) for c in range(0, w.shape[1], gs)]


def _max_distinct(w, group_size):
    return max(torch.unique(g).numel() for g in _groups(w, group_size))


def _correlated(n_tokens, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) / dim ** 0.5
    scale = torch.rand(dim, generator=g) * 3 + 0.1
    z = torch.randn(n_tokens, dim, generator=g)
    return (z @ mix + 0.3 * z) * scale  # correlated features with uneven magnitudes


def _calibration(n=2):
    g = torch.Generator().manual_seed(1)
    return Calibration([{"input_ids": torch.randint(0, 1000, (4, 16), generator=g),
                         "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(n)])


def _ids():
    return torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(2))


def test_registries():
    assert set(QUANTIZERS.names()) == set(QUANT_METHODS)
    assert POLICIES.get("quantize") is QuantizePolicy
    with pytest.raises(UserError):
        QUANTIZERS.get("awq")


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, None, 24])
def test_rtn_on_grid(symmetric, group_size):
    w = torch.randn(6, 128)
    for bits in range(2, 9):
        q = quantize_rtn(w, bits, group_size, symmetric)
        assert q.shape == w.shape and q.dtype == w.dtype
        assert _max_distinct(q, group_size) <= 2 ** bits
        scale, zero = quant_params(w, bits, group_size, symmetric)
        assert scale.shape == (6, 1 if group_size is None else -(-128 // group_size))
        ints = quantize_int(w, scale, zero, bits, group_size, symmetric)
        qmin, qmax = qrange(bits, symmetric)
        assert ints.min() >= qmin and ints.max() <= qmax
        assert torch.equal(dequantize(ints, scale, zero, group_size), q)  # exporter grid == fake-quant grid


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_error_falls_with_bits_and_zeros_stay(symmetric):
    w = torch.randn(32, 96)
    w[w.abs() < 0.5] = 0.0  # "pruned"
    errs = []
    for bits in range(2, 9):
        q = quantize_rtn(w, bits, 32, symmetric)
        assert torch.all(q[w == 0] == 0)
        errs.append(((q - w).norm() / w.norm()).item())
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.01


def test_asym_grid_has_zero_and_zero_groups_are_safe():
    w = torch.rand(4, 64) + 1.0  # all positive: min is clamped to 0, so 0 is a grid point
    scale, zero = quant_params(w, 4, 16, symmetric=False)
    assert torch.equal(zero, torch.round(zero)) and zero.min() >= 0 and zero.max() <= 15
    assert torch.all(dequantize(zero.repeat_interleave(16, 1).int(), scale, zero, 16) == 0)
    w[1, 16:32] = 0.0
    w[2] = 0.0
    for sym in (True, False):
        q = quantize_rtn(w, 3, 16, sym)
        assert torch.isfinite(q).all()
        assert torch.all(q[1, 16:32] == 0) and torch.all(q[2] == 0)
    assert torch.all(quantize_rtn(torch.zeros(3, 5), 4, None, True) == 0)


def test_rtn_half_precision_keeps_dtype():
    w = torch.randn(8, 40).to(torch.bfloat16)
    q = quantize_rtn(w, 4, 16, True)
    assert q.dtype == torch.bfloat16 and _max_distinct(q, 16) <= 16


@pytest.mark.parametrize("group_size", [32, None])
def test_gptq_beats_rtn_on_outputs(group_size):
    torch.manual_seed(0)
    x = _correlated(2048, 128)
    w = torch.randn(64, 128)
    gram = x.T @ x / x.shape[0]
    q_rtn = quantize_rtn(w, 3, group_size, True)
    q_gptq = quantize_gptq(w, gram, 3, group_size, True)
    err_rtn = (x @ w.T - x @ q_rtn.T).norm()
    err_gptq = (x @ w.T - x @ q_gptq.T).norm()
    assert err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, None, 24])
def test_gptq_keeps_zeros_and_grid(symmetric, group_size):
    x = _correlated(512, 96, seed=3)
    gram = x.T @ x / x.shape[0]
    gram[5, :] = gram[:, 5] = 0.0  # a dead input
    w = torch.randn(16, 96)
    w[torch.rand_like(w) < 0.5] = 0.0
    bits = 3
    q, scale, zero = quantize_gptq(w, gram, bits, group_size, symmetric, block_size=40, return_params=True)
    assert torch.isfinite(q).all()
    assert torch.all(q[w == 0] == 0)
    assert _max_distinct(q, group_size) <= 2 ** bits
    ints = quantize_int(q, scale, zero, bits, group_size, symmetric)
    assert torch.allclose(dequantize(ints, scale, zero, group_size), q, atol=1e-6)


def _changed(before, model):
    after = dict(model.named_parameters())
    return {n for n, p in before.items() if n in after and not torch.equal(p, after[n])}


def test_policy_gpt2_conv1d_rtn_and_gptq():
    lm = load_model("random:gpt2")
    model = lm.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = CompressionPlan({
        "transformer.h.0.attn.c_attn": LayerPlan(bits=4, group_size=32),
        "transformer.h.1.mlp.c_fc": LayerPlan(bits=3, group_size=None, symmetric=False, quant_method="gptq"),
    })
    QuantizePolicy().apply(model, plan, _calibration())
    assert _changed(before, model) == {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"}
    w = weight_matrix(model.get_submodule("transformer.h.0.attn.c_attn"))
    assert w.shape == (192, 64) and _max_distinct(w, 32) <= 16
    assert _max_distinct(weight_matrix(model.get_submodule("transformer.h.1.mlp.c_fc")), None) <= 8
    out = model(input_ids=_ids()).logits
    assert torch.isfinite(out).all()


def test_policy_llama_lowrank_both_factors():
    lm = load_model("random:llama")
    model = lm.model
    name = "model.layers.0.mlp.down_proj"
    dense = model.get_submodule(name)  # 192 -> 64
    u, s, vh = torch.linalg.svd(dense.weight.data, full_matrices=False)
    down, up = nn.Linear(192, 16, bias=False), nn.Linear(16, 64, bias=False)
    down.weight.data.copy_(s[:16, None] * vh[:16])
    up.weight.data.copy_(u[:, :16])
    set_module(model, name, LowRankLinear(down, up))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = CompressionPlan({name: LayerPlan(bits=4, group_size=8, quant_method="gptq"),
                            "model.layers.1.self_attn.q_proj": LayerPlan(bits=4)})
    QuantizePolicy().apply(model, plan, _calibration())
    assert _changed(before, model) == {f"{name}.down.weight", f"{name}.up.weight",
                                       "model.layers.1.self_attn.q_proj.weight"}
    assert _max_distinct(down.weight.data, 8) <= 16 and _max_distinct(up.weight.data, 8) <= 16
    assert torch.isfinite(model(input_ids=_ids()).logits).all()


def test_act_int8_hook():
    lm = load_model("random:llama")
    model = lm.model
    ids = _ids()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    names = [n for n in lm.info.layers if n.startswith("model.layers.")]
    plan = CompressionPlan({n: LayerPlan(act_bits=8) for n in names})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    policy = QuantizePolicy()
    policy.apply(model, plan, None)
    policy.apply(model, plan, None)  # idempotent: one hook per module
    assert not _changed(before, model)  # act_bits alone leaves the weights alone
    mod = model.get_submodule(names[0])
    assert getattr(mod, ACT_ATTR) == 8 and list(mod._forward_pre_hooks.values()) == [act_quant_hook]
    with torch.no_grad():
        out = model(input_ids=ids).logits
    diff = (out - ref).norm() / ref.norm()
    assert 0 < diff < 0.05, diff
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(clone(input_ids=ids).logits, out)
    assert pickle.loads(pickle.dumps(act_quant_hook)) is act_quant_hook
    x = torch.randn(3, 5, 16)
    xq = fake_quant_act_int8(x)
    assert max(torch.unique(t).numel() for t in xq.reshape(-1, 16)) <= 255
    assert torch.equal(fake_quant_act_int8(torch.zeros(2, 4)), torch.zeros(2, 4))


def test_gptq_needs_calibration():
    lm = load_model("random:bert")
    policy = QuantizePolicy()
    assert policy.needs_calibration(LayerPlan(bits=4, quant_method="gptq"))
    assert not policy.needs_calibration(LayerPlan(bits=4))
    assert not policy.needs_calibration(LayerPlan(act_bits=8, quant_method="gptq"))
    assert not policy.handles(LayerPlan(sparsity=0.5))
    plan = CompressionPlan({"encoder.layer.0.attention.self.query": LayerPlan(bits=4, quant_method="gptq")})
    for calib in (None, Calibration([])):
        with pytest.raises(UserError, match="gptq"):
            policy.apply(lm.model, plan, calib)


@pytest.mark.slow
def test_minilm_gptq_4bit_keeps_embeddings():
    lm = load_model("all-MiniLM-L6-v2")
    if lm.tokenizer is None:
        pytest.skip("the MiniLM package is not installed")
    sentences = ["The cat sits on the mat.", "Quantization shrinks neural networks.",
                 "Paris is the capital of France.", "A quick brown fox jumps over the lazy dog.",
                 "Stocks fell sharply on Monday.", "She plays the violin every evening."]
    enc = lm.tokenizer(sentences, padding=True, return_tensors="pt")

    def embed(model):
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    ref = embed(lm.model)
    calib = Calibration([dict(lm.tokenizer(sentences[:3], padding=True, return_tensors="pt"))])
    names = lm.info.targets_by_default()
    results = {}
    for method in ("rtn", "gptq"):
        model = copy.deepcopy(lm.model)
        plan = CompressionPlan({n: LayerPlan(bits=4, group_size=64, quant_method=method, act_bits=8) for n in names})
        QuantizePolicy().apply(model, plan, calib)
        results[method] = (embed(model) * ref).sum(-1).min().item()
    assert results["rtn"] > 0.9 and results["gptq"] > 0.9, results


@pytest.mark.parametrize("symmetric", [True, False])
def test_scales_are_float16_exact_and_never_zero(symmetric):
    w = torch.randn(8, 64) * torch.logspace(-9, 3, 8)[:, None]  # rows from tiny to large
    w[0] = 0.0
    for group_size in (16, None):
        scale, zero = quant_params(w, 4, group_size, symmetric)
        assert torch.equal(scale.to(torch.float16).float(), scale)  # exactly what the export stores
        assert scale.min() >= 2.0 ** -24 and torch.isfinite(scale.to(torch.float16)).all()
        assert torch.all(scale[0] == 1.0)  # an all-zero row keeps scale 1
        if not symmetric:  # the zero point is computed from the rounded scale: 0.0 stays on the grid
            assert torch.all(dequantize(zero.repeat_interleave(64 if group_size is None else 16, 1).int(),
                                        scale, zero, group_size) == 0)
        q = quantize_rtn(w, 4, group_size, symmetric)
        assert torch.equal(dequantize(quantize_int(q, scale, zero, 4, group_size, symmetric), scale, zero,
                                      group_size), q)


def test_policy_records_the_grid_outside_the_state_dict():
    from autocompress.policies.quantize import GRID_ATTR, QuantGrid

    lm = load_model("random:gpt2")
    model = lm.model
    keys = set(model.state_dict())
    name = "transformer.h.0.mlp.c_fc"
    plan = CompressionPlan({name: LayerPlan(bits=3, group_size=16, symmetric=False, quant_method="gptq"),
                            "transformer.h.1.mlp.c_fc": LayerPlan(act_bits=8)})
    QuantizePolicy().apply(model, plan, _calibration())
    assert set(model.state_dict()) == keys
    grid = getattr(model.get_submodule(name), GRID_ATTR)
    assert isinstance(grid, QuantGrid) and (grid.bits, grid.group_size, grid.symmetric) == (3, 16, False)
    w = weight_matrix(model.get_submodule(name))  # Conv1D: the grid is in the [out, in] layout
    assert grid.scale.shape == grid.zero.shape == (w.shape[0], w.shape[1] // 16)
    ints = quantize_int(w, grid.scale, grid.zero, 3, 16, False)
    assert torch.equal(dequantize(ints, grid.scale, grid.zero, 16), w)
    assert not hasattr(model.get_submodule("transformer.h.1.mlp.c_fc"), GRID_ATTR)  # act_bits only
    for method in set(QUANT_METHODS) - {"kmeans"}:  # kmeans records a codebook (tests/policies/test_kmeans.py)
        q, g = QUANTIZERS.get(method)(w, LayerPlan(bits=4, quant_method=method), torch.eye(w.shape[1]))
        assert isinstance(g, QuantGrid) and q.shape == w.shape


def test_policy_quantizes_embedding_tables_per_token():
    from autocompress.policies import apply_plan
    from autocompress.policies.verify import plan_violations

    lm = load_model("random:bert")
    word = "embeddings.word_embeddings"
    plan = CompressionPlan({word: LayerPlan(bits=4, group_size=32),
                            "encoder.layer.0.attention.self.query": LayerPlan(bits=8, group_size=None)})
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    table, before = model.get_submodule(word).weight, lm.model.get_submodule(word).weight
    assert plan_violations(model, plan, lm.info) == []
    assert _max_distinct(table, 32) <= 16 and not torch.equal(table, before)
    # each token's vector is quantized on its own: the RTN grid of that row alone
    assert torch.equal(table[7:8], quantize_rtn(before[7:8], 4, 32, True))
    grid = getattr(model.get_submodule(word), "_autocompress_grid")
    assert grid.scale.shape == (30522, 2)
    untouched = "embeddings.position_embeddings"
    assert torch.equal(model.get_submodule(untouched).weight, lm.model.get_submodule(untouched).weight)
    assert plan_violations(lm.model, plan, lm.info)  # the original model is not on the grid
    model(input_ids=_ids())  # still runs
