"""Sequential GPTQ (policies/sequential.py, blockwise.py) and GPTQ's act-order with static groups (quantize.py):
block by block through the already-quantized blocks, on the standard grid, padding masked out, exact through
the memo."""

import copy

import pytest
import torch

from autocompress.data import load_texts, make_batches
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import Calibration, apply_plan
from autocompress.policies.blockwise import BlockRunner
from autocompress.policies.memo import BaseModelMemo
from autocompress.policies.quantize import (
    GRID_ATTR, dequantize, quant_params, quantize_gptq, quantize_int, quantize_rtn,
)
from autocompress.policies.verify import plan_violations
from autocompress.selection import build_plan
from tests.policies.test_contract import VARIANTS, run

MODELS = ("random:bert", "random:llama", "random:gpt2")


@pytest.fixture(scope="module")
def texts():
    return load_texts("builtin", n=24, seed=3)


def _batches(lm, texts):
    return make_batches(lm.tokenizer, texts, batch_size=8, max_length=32)  # right-padded: masks hold zeros


def _gptq_plan(lm, **extra):
    return CompressionPlan({n: LayerPlan(bits=3, group_size=16, quant_method="gptq", **extra)
                            for n in lm.info.targets_by_default()})


def _apply(lm, plan, calibration):
    return apply_plan(copy.deepcopy(lm.model), plan, calibration, info=lm.info)


def _weights(model, names):
    return {n: model.get_submodule(n).weight.detach().clone() for n in names}


@pytest.mark.parametrize("spec", MODELS)
def test_sequential_gptq_is_on_the_grid_and_corrects_for_earlier_blocks(spec, texts):
    lm = load_model(spec)
    batches = _batches(lm, texts)
    assert any(int(b["attention_mask"].sum()) < b["attention_mask"].numel() for b in batches)
    plan = _gptq_plan(lm)
    one_pass = _apply(lm, plan, Calibration(batches))
    sequential = _apply(lm, plan, Calibration(batches, sequential=True))
    names = lm.info.targets_by_default()
    for name in names:
        m = sequential.get_submodule(name)
        grid = getattr(m, GRID_ATTR)
        w = m.weight.detach() if type(m).__name__ != "Conv1D" else m.weight.detach().t()
        q = quantize_int(w, grid.scale, grid.zero, 3, 16, True)
        assert torch.equal(dequantize(q, grid.scale, grid.zero, 16), w.float()), name
        groups = w.reshape(w.shape[0], -1, 16)
        assert max(torch.unique(g).numel() for g in groups.reshape(-1, 16)) <= 8, name
    assert plan_violations(sequential, plan, lm.info) == []
    a, b = _weights(one_pass, names), _weights(sequential, names)
    first = [n for n in names if lm.info.layers[n].block == 0]
    later = [n for n in names if lm.info.layers[n].block == 1]
    assert all(torch.equal(a[n], b[n]) for n in first)  # block 0 sees the same inputs either way
    assert all(not torch.equal(a[n], b[n]) for n in later)  # block 1 sees block 0's quantized outputs
    ids = {k: v[:2] for k, v in batches[0].items()}
    out = run(sequential, ids)
    assert out.shape == run(lm.model, ids).shape and torch.isfinite(out).all()


@pytest.mark.parametrize("spec", MODELS)
def test_block_inputs_replay_the_model_and_padding_stays_out_of_the_grams(spec, texts):
    lm = load_model(spec)
    batches = _batches(lm, texts[:8])
    runner = BlockRunner(lm.model, batches)
    layer = next(n for n in lm.info.targets_by_default() if lm.info.layers[n].block == 1)
    modules = {layer: lm.model.get_submodule(layer)}
    runner.advance(0)
    padded = runner.grams(1, modules)[layer]
    # the same texts one at a time (no padding at all), and a padded batch whose padding holds other tokens
    alone = BlockRunner(lm.model, [{k: v[i:i + 1, :int(b["attention_mask"][i].sum())] for k, v in b.items()}
                                   for b in batches for i in range(b["input_ids"].shape[0])])
    alone.advance(0)
    assert torch.allclose(alone.grams(1, modules)[layer], padded, rtol=1e-4, atol=1e-5)
    noisy = [dict(b) for b in batches]
    for b in noisy:
        b["input_ids"] = torch.where(b["attention_mask"].bool(), b["input_ids"], torch.full_like(b["input_ids"], 999))
    other = BlockRunner(lm.model, noisy)
    other.advance(0)
    assert torch.allclose(other.grams(1, modules)[layer], padded, rtol=1e-5, atol=1e-6)
    # the kept activations are the model's own hidden states after block 0
    with torch.no_grad():
        hidden = lm.model(**batches[0], output_hidden_states=True).hidden_states[1]
    mask = batches[0]["attention_mask"].bool()
    assert torch.equal(runner.inputs[0].hidden[mask], hidden[mask])


def test_sequential_runs_every_policy_together(texts, calibration_batches):
    for spec in MODELS:
        lm = load_model(spec)
        plan = build_plan(lm.info, VARIANTS["all-together"][1])
        model = _apply(lm, plan, Calibration(_batches(lm, texts), sequential=True))
        assert plan_violations(model, plan, lm.info) == []
        assert torch.isfinite(run(model, calibration_batches[0])).all()


def test_sequential_mixes_rtn_layers_and_an_outside_gptq_layer(texts):
    lm = load_model("random:gpt2")  # lm_head is tied to the token table: outside the blocks
    names = lm.info.targets_by_default()
    layers = {n: LayerPlan(bits=4, group_size=16, quant_method="gptq" if i % 2 else "rtn", act_bits=8 if i == 0 else None)
              for i, n in enumerate(names)}
    layers["lm_head"] = LayerPlan(bits=8, group_size=32, quant_method="gptq")
    plan = CompressionPlan(layers)
    model = _apply(lm, plan, Calibration(_batches(lm, texts), sequential=True))
    assert plan_violations(model, plan, lm.info) == []
    rtn = names[0]
    w = lm.model.get_submodule(rtn).weight.detach().t()
    assert torch.equal(model.get_submodule(rtn).weight.detach().t(), quantize_rtn(w, 4, 16, True))


def test_act_order_with_static_groups_keeps_the_standard_grid():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g) * (torch.rand(64, generator=g) * 4 + 0.1)
    w = torch.randn(24, 64, generator=g)
    w[0, :5] = 0.0
    gram = x.T @ x / x.shape[0]
    for group_size in (16, None):
        q, scale, zero = quantize_gptq(w, gram, 3, group_size, False, act_order=True, return_params=True)
        ref_scale, ref_zero = quant_params(w, 3, group_size, False)
        assert torch.equal(scale, ref_scale) and torch.equal(zero, ref_zero)  # static: from the original weights
        assert torch.equal(dequantize(quantize_int(q, scale, zero, 3, group_size, False), scale, zero, group_size), q)
        assert (q[0, :5] == 0).all()
        plain = quantize_gptq(w, gram, 3, group_size, False)
        assert not torch.equal(q, plain)
        out = lambda m: ((x @ (w - m).T) ** 2).mean()  # noqa: E731
        assert out(q) < out(quantize_rtn(w, 3, group_size, False))


def _same(a, b, names):
    for n in names:
        ma, mb = a.get_submodule(n), b.get_submodule(n)
        assert torch.equal(ma.weight, mb.weight), n
        ga, gb = getattr(ma, GRID_ATTR), getattr(mb, GRID_ATTR)
        assert torch.equal(ga.scale, gb.scale) and torch.equal(ga.zero, gb.zero), n


def test_the_memo_reuses_a_block_only_after_the_same_earlier_blocks(texts):
    lm = load_model("random:llama")
    batches = _batches(lm, texts)
    names = lm.info.targets_by_default()
    block0 = [n for n in names if lm.info.layers[n].block == 0]
    memo = BaseModelMemo(lm.model)
    remembered = Calibration(batches, memo=memo, sequential=True)
    plan = _gptq_plan(lm)
    reference = _apply(lm, plan, Calibration(batches, sequential=True))
    _same(_apply(lm, plan, remembered), reference, names)
    assert (memo.hits, memo.misses) == (0, len(names))
    _same(_apply(lm, plan, remembered), reference, names)  # every layer rebuilt from the kept integers
    assert (memo.hits, memo.misses) == (len(names), len(names))
    # block 0 at another bit width: block 1's inputs differ, so nothing of block 1 may be reused
    other = CompressionPlan({n: LayerPlan(bits=4 if n in block0 else 3, group_size=16, quant_method="gptq")
                             for n in names})
    fresh = _apply(lm, other, Calibration(batches, sequential=True))
    _same(_apply(lm, other, remembered), fresh, names)
    assert (memo.hits, memo.misses) == (len(names), 2 * len(names))
    # only the last block differs: the first is reused
    last = CompressionPlan({n: LayerPlan(bits=3 if n in block0 else 4, group_size=16, quant_method="gptq")
                            for n in names})
    _same(_apply(lm, last, remembered), _apply(lm, last, Calibration(batches, sequential=True)), names)
    assert (memo.hits, memo.misses) == (len(names) + len(block0), 3 * len(names) - len(block0))
    assert memo.matches(lm.model)
