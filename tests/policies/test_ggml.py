"""ggml's block grids (policies/ggml.py) as a layer's `gguf_type`: RTN gives exactly what `gguf.quants` gives,
GPTQ stays on the grid and beats RTN, the memo rebuilds the same weights, plans and sizes say the GGUF truth."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autocompress.errors import UserError
from autocompress.evaluators.size import plan_size
from autocompress.export import save_compressed
from autocompress.loading import load_model
from autocompress.models import inspect_model
from autocompress.plan import GGUF_TYPES, CompressionPlan, LayerPlan
from autocompress.policies import Calibration, apply_plan, ggml
from autocompress.policies.memo import BaseModelMemo
from autocompress.policies.quantize import GRID_ATTR, quantize_gptq
from autocompress.validation import validate_plan


def _weights(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(48, 256, generator=g) * 10 ** (torch.rand(1, generator=g).item() * 5 - 4)
    w[3, :32] = 0  # an all-zero block
    w[5, 32:64] = 0.7  # a constant block
    w[7, 64:96] = w[7, 64:96].half().float()  # fp16 values
    return w


@pytest.mark.parametrize("gguf_type", list(GGUF_TYPES))
def test_rtn_is_ggml_bit_for_bit(gguf_type):
    import gguf

    qtype = gguf.GGMLQuantizationType[gguf_type]
    for seed in range(8):
        w = _weights(seed)
        reference = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype)
        fake, grid = ggml.quantize_rtn_ggml(w, gguf_type)
        assert np.array_equal(fake.numpy(), reference), seed
        assert (grid.gguf_type, grid.bits, grid.group_size) == (gguf_type, GGUF_TYPES[gguf_type][0], 32)
        assert (grid.minimum is None) == GGUF_TYPES[gguf_type][1]
        codes = ggml.ggml_codes(fake, grid)
        assert int(codes.min()) >= (-127 if gguf_type == "Q8_0" else 0) and int(codes.max()) <= ggml.levels(gguf_type)
        assert torch.equal(ggml.ggml_dequantize(codes, grid), fake)


def _correlated(n: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(n, dim, generator=g)
    return (z @ (torch.randn(dim, dim, generator=g) / dim ** 0.5) + 0.3 * z) * (torch.rand(dim, generator=g) * 3 + 0.1)


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("gguf_type", ["Q4_0", "Q4_1", "Q8_0"])
def test_gptq_on_the_ggml_grid_beats_rtn(gguf_type, act_order):
    x = _correlated(512, 128)
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(4))
    gram = x.T @ x / x.shape[0]
    q, grid = quantize_gptq(w, gram, grid_bits(gguf_type), 32, GGUF_TYPES[gguf_type][1], return_params=True,
                            act_order=act_order, rule=ggml.GgmlRule(gguf_type))
    assert torch.equal(ggml.ggml_dequantize(ggml.ggml_codes(q, grid), grid), q)  # exactly on the written grid
    rtn, _ = ggml.quantize_rtn_ggml(w, gguf_type)
    assert ((x @ (w - q).T) ** 2).sum() < ((x @ (w - rtn).T) ** 2).sum()


def grid_bits(gguf_type: str) -> int:
    return GGUF_TYPES[gguf_type][0]


def test_layer_plan_gguf_type_sets_and_checks_the_grid():
    p = LayerPlan(gguf_type="Q4_1", quant_method="gptq")
    assert (p.bits, p.group_size, p.symmetric) == (4, 32, False)
    assert LayerPlan.from_dict(p.to_dict()) == p and p.to_dict()["gguf_type"] == "Q4_1"
    assert LayerPlan(bits=8, gguf_type="Q8_0") == LayerPlan(gguf_type="Q8_0", group_size=32)
    for bad in (dict(gguf_type="Q4_K"), dict(gguf_type="Q4_0", bits=8), dict(gguf_type="Q4_0", group_size=64),
                dict(gguf_type="Q4_0", symmetric=False), dict(gguf_type="Q8_0", act_bits=8),
                dict(gguf_type="Q4_0", rank=0.5), dict(gguf_type="Q5_0", sparsity=0.5)):
        with pytest.raises(UserError, match="gguf_type"):
            LayerPlan(**bad)
    plan = CompressionPlan({"a": LayerPlan(gguf_type="Q5_0"), "b": LayerPlan(gguf_type="Q5_0")})
    assert "gguf Q5_0x2" in plan.summary() and "Q5_0" in str(plan)


def test_plans_with_gguf_types_refused_where_they_cannot_go():
    from autocompress.distill_spec import DistillConfig

    with pytest.raises(UserError, match="distill"):
        CompressionPlan({"x": LayerPlan(gguf_type="Q4_0")}, distill=DistillConfig(steps=10))
    from transformers import LlamaConfig, LlamaForCausalLM

    odd = LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                       num_attention_heads=4, vocab_size=128))
    info = inspect_model(odd, "causal-lm")
    validate_plan(CompressionPlan({"model.layers.0.mlp.down_proj": LayerPlan(gguf_type="Q4_0")}), info)  # 96 in
    with pytest.raises(UserError, match="blocks of 32"):
        validate_plan(CompressionPlan({"model.layers.0.mlp.up_proj": LayerPlan(gguf_type="Q4_0")}), info)  # 48 in


def test_size_counts_ggml_blocks():
    import gguf

    info = load_model("random:llama").info
    name = "model.layers.0.mlp.down_proj"  # 64 x 192
    dense = plan_size(CompressionPlan({}), info)
    for t in GGUF_TYPES:
        size = plan_size(CompressionPlan({name: LayerPlan(gguf_type=t)}), info)
        block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]][1]
        assert size.per_layer[name] == 64 * 192 // 32 * block_bytes
        assert dense.total_bytes - size.total_bytes == 64 * 192 * 4 - size.per_layer[name]


def _batches():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 1000, (4, 16), generator=g),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(2)]


def test_policy_and_memo_on_ggml_grids(tmp_path):
    lm = load_model("random:llama")
    layers = sorted(lm.info.targets_by_default())
    types = list(GGUF_TYPES)
    plan = CompressionPlan({n: LayerPlan(gguf_type=types[i % 5], quant_method=("gptq", "rtn")[i % 2])
                            for i, n in enumerate(layers)})
    reference = apply_plan(copy.deepcopy(lm.model), plan, Calibration(_batches()), info=lm.info)
    memo = BaseModelMemo(lm.model)
    for _ in range(2):  # computed, then rebuilt from the memo's integers and grids
        again = apply_plan(copy.deepcopy(lm.model), plan, Calibration(_batches(), memo=memo), info=lm.info)
        for name in layers:
            a, b = reference.get_submodule(name), again.get_submodule(name)
            assert torch.equal(a.weight, b.weight), name
            ga, gb = getattr(a, GRID_ATTR), getattr(b, GRID_ATTR)
            assert ga.gguf_type == gb.gguf_type == plan.layers[name].gguf_type
            assert torch.equal(ggml.ggml_dequantize(ggml.ggml_codes(a.weight, ga), ga), a.weight.float())
    assert memo.hits > 0
    with pytest.raises(UserError, match="--format gguf"):  # the packed autocompress format stores integer grids
        save_compressed(reference, plan, lm.info, str(tmp_path / "packed"))
    assert not (tmp_path / "packed").exists()
