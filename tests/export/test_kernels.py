import copy

import pytest
import torch
from torch import nn

from autocompress.data import load_texts
from autocompress.evaluators.fidelity import FidelityEvaluator
from autocompress.export import load_compressed, save_compressed
from autocompress.export.kernels import KERNELS, has_kernel, kernel_kind, kernel_module
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from autocompress.policies.quantize import (
    ACT_ATTR, QuantGrid, act_quant_hook, dequantize, quantize_int, quantize_rtn,
)
from autocompress.policies.smooth import smooth_hook
from tests.export.conftest import ids


def _grid(bits, group_size, symmetric, shape=(48, 256), seed=0):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    fq, scale, zero = quantize_rtn(w, bits, group_size, symmetric, return_params=True)
    q = quantize_int(fq, scale, zero, bits, group_size, symmetric)
    return q, QuantGrid(bits, group_size, symmetric, scale, zero), fq


@pytest.mark.parametrize("kind,bits,group_size,symmetric", [
    ("int8", 8, None, True), ("int8", 8, None, False),
    ("int4", 4, 32, True), ("int4", 4, 64, False), ("int4", 4, 128, True), ("w8a8", 8, None, True),
])
def test_kernel_matches_its_dequantized_linear(kind, bits, group_size, symmetric):
    if not has_kernel(kind):
        pytest.skip(f"torch here has no {kind} kernel")
    q, grid, fq = _grid(bits, group_size, symmetric)
    assert torch.equal(dequantize(q, grid.scale, grid.zero, group_size), fq)
    bias = torch.randn(48)
    ref = nn.Linear(256, 48)
    with torch.no_grad():
        ref.weight.copy_(fq)
        ref.bias.copy_(bias)
    x = torch.randn(3, 7, 256, generator=torch.Generator().manual_seed(1))
    module = kernel_module(q, grid, bias, kind)
    with torch.no_grad():
        y, y_ref = module(x), ref(x)
    assert y.shape == y_ref.shape == (3, 7, 48) and y.dtype == torch.float32
    rel = ((y - y_ref).norm() / y_ref.norm()).item()
    # bfloat16 activations (weight-only kernels) or int8 activations per tensor (w8a8) round a little
    assert rel < (0.005 if kind != "w8a8" else 0.03), rel
    if kind != "w8a8":  # the same kernel computing in float32 shows that the weights are exactly the grid
        exact = KERNELS[kind](q, grid, bias, torch.float32)
        with torch.no_grad():
            assert (exact(x) - y_ref).abs().max() <= 1e-4 * y_ref.abs().max()


def test_w8a8_kernel_divides_by_the_smoothing_vector():
    if not has_kernel("w8a8"):
        pytest.skip("torch here has no w8a8 kernel")
    q, grid, fq = _grid(8, None, True)
    s = torch.rand(256, generator=torch.Generator().manual_seed(3)) * 4 + 0.25
    x = torch.randn(3, 7, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = kernel_module(q, grid, None, "w8a8", smooth=s)(x)
        assert torch.equal(y, kernel_module(q, grid, None, "w8a8")(x / s))  # s divides before the per-token scale
        y_ref = (x / s) @ fq.T
    # uneven s widens the per-token ranges; the kernel's 7-bit activations (reduce_range) round more
    assert ((y - y_ref).norm() / y_ref.norm()).item() < 0.05
    with pytest.raises(ValueError, match="smoothing"):
        kernel_module(q, grid, None, "int8", smooth=s)


def test_kernel_choice():
    per_channel = QuantGrid(8, None, True, torch.ones(32, 1), torch.zeros(32, 1))
    assert kernel_kind(per_channel, (32, 64), 8) == "w8a8"
    assert kernel_kind(per_channel, (32, 64), None) == "int8"
    # torch's int8 weight-only op reads in_features in blocks of 16: other widths run dequantized (not a crash)
    assert kernel_kind(QuantGrid(8, None, True, torch.ones(32, 1), torch.zeros(32, 1)), (32, 40), None) is None
    assert kernel_kind(QuantGrid(8, None, True, torch.ones(32, 1), torch.zeros(32, 1)), (32, 40), 8) == "w8a8"
    asym = QuantGrid(8, None, False, torch.ones(32, 1), torch.zeros(32, 1))
    assert kernel_kind(asym, (32, 64), 8) == "int8"  # no asymmetric dynamic kernel: int8 weights + the hook
    g32 = QuantGrid(4, 32, False, torch.ones(32, 2), torch.zeros(32, 2))
    assert kernel_kind(g32, (32, 64), None) == "int4"
    assert kernel_kind(g32, (32, 48), None) is None  # in_features not a multiple of the group
    assert kernel_kind(g32, (24, 64), None) is None  # out_features not a multiple of 16
    assert kernel_kind(QuantGrid(4, 16, True, torch.ones(32, 4), torch.zeros(32, 4)), (32, 64), None) is None
    assert kernel_kind(QuantGrid(3, 32, True, torch.ones(32, 2), torch.zeros(32, 2)), (32, 64), None) is None
    assert kernel_kind(QuantGrid(8, 32, True, torch.ones(32, 2), torch.zeros(32, 2)), (32, 64), None) is None


def test_load_with_kernels(exported):
    e = exported["random:bert"]
    cm = load_compressed(e.path, kernels=True)
    b = "encoder.layer"
    assert cm.kernels == {f"{b}.0.attention.self.query": "int4", f"{b}.0.attention.self.value": "w8a8",
                          f"{b}.0.intermediate.dense": "int4", f"{b}.0.output.dense": "int8",
                          f"{b}.1.attention.self.key": "int8", "embeddings.word_embeddings": "table4",
                          "embeddings.position_embeddings": "table8"}
    value = cm.model.get_submodule(f"{b}.0.attention.self.value")
    assert not hasattr(value, ACT_ATTR)  # the dynamic kernel quantizes its own input
    assert getattr(cm.model.get_submodule(f"{b}.1.attention.output.dense"), ACT_ATTR) == 8
    x = ids()
    with torch.no_grad():
        ref = e.model(input_ids=x).last_hidden_state
        out = cm.model(input_ids=x).last_hidden_state
    assert ((out - ref).norm() / ref.norm()) < 0.02


@pytest.mark.parametrize("spec,expected", [
    ("random:gpt2", {"transformer.h.0.attn.c_attn": "int4", "transformer.h.0.mlp.c_fc": "int8",
                     "transformer.h.1.attn.c_proj": "w8a8",
                     "transformer.h.1.mlp.c_proj": "int4", "transformer.wpe": "table3"}),  # lm_head: 30522 rows
    ("random:llama", {"model.layers.0.self_attn.q_proj": "int4", "model.layers.0.mlp.gate_proj": "int4",
                      "model.layers.0.self_attn.v_proj": "w8a8", "model.layers.0.mlp.down_proj": "int8",
                      "model.layers.1.mlp.down_proj.down": "w8a8", "model.layers.1.mlp.down_proj.up": "w8a8",
                      "lm_head": "int8", "model.embed_tokens": "table5"}),
])
def test_causal_lms_with_kernels(exported, spec, expected):
    e = exported[spec]
    cm = load_compressed(e.path, kernels=True)
    assert cm.kernels == expected
    for name, entry in e.plan.layers.items():  # smoothing: inside a w8a8 kernel, else a hook before int8
        if entry.smooth is not None:
            module = cm.model.get_submodule(name)
            want = e.model.get_submodule(name)._autocompress_smooth
            if expected.get(name) == "w8a8":
                assert torch.equal(module.smooth, want) and not module._forward_pre_hooks
            else:
                assert torch.equal(module._autocompress_smooth, want)
                assert list(module._forward_pre_hooks.values()) == [smooth_hook, act_quant_hook]
    x = ids()
    with torch.no_grad():
        ref, out = e.model(input_ids=x).logits, cm.model(input_ids=x).logits
    assert ((out - ref).norm() / ref.norm()) < 0.02


def test_a_tied_head_on_a_kernel_packs_its_table_from_the_same_integers(tmp_path):
    """lm_head (tied to model.embed_tokens) at 8 bits per channel runs the int8 kernel; the table, which no
    longer shares a float weight with it, becomes a PackedEmbedding of the same integers: its lookups stay
    exactly the rows of the dequantized head and no float copy of the 30522 x 64 weight is left."""
    if not has_kernel("int8"):
        pytest.skip("torch here has no int8 kernel")
    from autocompress.export.embedding import PackedEmbedding
    from autocompress.loading import load_model

    lm = load_model("random:llama-tied")
    plan = CompressionPlan({"lm_head": LayerPlan(bits=8, group_size=None, symmetric=False)})
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    save_compressed(model, plan, lm.info, str(tmp_path), tokenizer=lm.tokenizer)
    cm = load_compressed(str(tmp_path), kernels=True)
    assert cm.kernels == {"lm_head": "int8", "model.embed_tokens": "table8"}
    table = cm.model.model.embed_tokens
    assert isinstance(table, PackedEmbedding) and table.zeros is not None
    assert not any(p.numel() >= 30522 * 64 for p in cm.model.parameters())  # the float weight is gone
    x = ids()
    with torch.no_grad():
        assert torch.equal(table(x), model.lm_head.weight[x])
        ref, out = model(input_ids=x).logits, cm.model(input_ids=x).logits
    assert ((out - ref).norm() / ref.norm()) < 0.02


@pytest.mark.slow
def test_minilm_kernels_keep_fidelity(minilm, tmp_path):
    if minilm.tokenizer is None:
        pytest.skip("the MiniLM package is not installed")
    layers = {}
    for name in minilm.info.targets_by_default():
        if name.endswith("attention.output.dense"):
            layers[name] = LayerPlan(bits=8, group_size=None)  # 8-bit weight-only
        elif name.endswith("intermediate.dense"):
            layers[name] = LayerPlan(bits=4, group_size=32)
        else:  # q, k, v and the FFN output (whose GELU input has the widest per-token ranges): W8A8
            layers[name] = LayerPlan(bits=8, group_size=None, act_bits=8)
    layers.update({t: LayerPlan(bits=4, group_size=32) for t in minilm.info.embeddings})  # tables stay packed
    plan = CompressionPlan(layers)
    model = apply_plan(copy.deepcopy(minilm.model), plan, info=minilm.info)
    save_compressed(model, plan, minilm.info, str(tmp_path), tokenizer=minilm.tokenizer)
    evaluator = FidelityEvaluator(minilm.model, minilm.tokenizer, load_texts(n=48, seed=0), batch_size=16)
    plain = load_compressed(str(tmp_path))
    fast = load_compressed(str(tmp_path), kernels=True)
    assert set(fast.kernels.values()) == {"w8a8", "int4", "int8", "table4"} and len(fast.kernels) == len(layers)
    f_search = evaluator.evaluate(model)["fidelity"]
    f_plain = evaluator.evaluate(plain.model)["fidelity"]
    f_fast = evaluator.evaluate(fast.model)["fidelity"]
    assert f_plain == pytest.approx(f_search, abs=1e-6)
    assert abs(f_fast - f_plain) <= 0.01, (f_fast, f_plain)
