"""Tests for autocompress.policies.lowrank: factorizations and the policy on Linear and Conv1D models."""

from __future__ import annotations

import pytest
import torch

from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.modules import LowRankLinear, weight_matrix
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies._base import POLICIES, Calibration
from autocompress.policies.lowrank import LowRankPolicy, factorize_svd, factorize_whitened, whitening


def _calibration(seed: int = 0) -> Calibration:
    g = torch.Generator().manual_seed(seed)
    return Calibration([{"input_ids": torch.randint(0, 1000, (4, 16), generator=g),
                         "attention_mask": torch.ones(4, 16, dtype=torch.long)}])


def _correlated(n_tok=400, n_in=40, n_out=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g)
    scales = torch.logspace(-2, 1, n_in)
    x = (torch.randn(n_tok, n_in, generator=g) * scales) @ mix
    w = torch.randn(n_out, n_in, generator=g)
    return x, w


@pytest.mark.parametrize("shape,rank", [((30, 40), 5), ((40, 30), 7), ((16, 16), 16)])
def test_svd_shapes(shape, rank):
    w = torch.randn(*shape)
    down, up = factorize_svd(w, rank)
    assert down.shape == (rank, shape[1]) and up.shape == (shape[0], rank)
    assert down.dtype == w.dtype == up.dtype
    assert torch.linalg.matrix_rank(up @ down) == rank


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_rank_reconstructs(dtype):
    w = torch.randn(20, 12, dtype=dtype)
    down, up = factorize_svd(w, 12)
    assert down.dtype == dtype
    assert torch.allclose(up @ down, w, atol=1e-5)
    x, _ = _correlated(n_in=12)
    gram = (x.T @ x / x.shape[0]).to(dtype)
    down, up = factorize_whitened(w, gram, 12)
    assert torch.allclose(up @ down, w, atol=1e-4)


def test_error_decreases_with_rank():
    x, w = _correlated()
    gram = x.T @ x / x.shape[0]
    errs_svd, errs_wh = [], []
    for r in (1, 4, 8, 16, 30):
        down, up = factorize_svd(w, r)
        errs_svd.append((w - up @ down).norm().item())
        down, up = factorize_whitened(w, gram, r)
        errs_wh.append((x @ w.T - x @ (up @ down).T).norm().item())
    assert all(a > b for a, b in zip(errs_svd, errs_svd[1:]))
    assert all(a > b for a, b in zip(errs_wh, errs_wh[1:]))
    assert errs_svd[-1] < 1e-3


def test_svd_matches_eckart_young():
    w = torch.randn(25, 18, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    down, up = factorize_svd(w, 6)
    assert torch.isclose((w - up @ down).norm(), s[6:].norm())


@pytest.mark.parametrize("rank", [2, 8, 16])
def test_whitened_beats_svd_on_activations(rank):
    x, w = _correlated()
    gram = x.T @ x / x.shape[0]
    y = x @ w.T
    d, u = factorize_svd(w, rank)
    err_svd = (y - x @ (u @ d).T).norm()
    d, u = factorize_whitened(w, gram, rank)
    err_wh = (y - x @ (u @ d).T).norm()
    assert err_wh < 0.7 * err_svd


def test_whitening_handles_singular_gram():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 32, generator=g)  # fewer tokens than features: gram of rank 10
    gram = x.T @ x / 10
    s = whitening(gram)
    assert torch.isfinite(s).all() and torch.allclose(s, s.tril())
    w = torch.randn(16, 32, generator=g)
    down, up = factorize_whitened(w, gram, 4)
    assert torch.isfinite(down).all() and torch.isfinite(up).all()
    down, up = factorize_whitened(w, torch.zeros(32, 32), 4)  # all-zero gram: falls back to plain SVD
    d2, u2 = factorize_svd(w, 4)
    assert torch.allclose(up @ down, u2 @ d2, atol=1e-4)


def test_bad_rank_for_functions():
    with pytest.raises(ValueError):
        factorize_svd(torch.randn(4, 6), 5)
    with pytest.raises(ValueError):
        factorize_whitened(torch.randn(4, 6), torch.eye(5), 2)


def test_registered_and_handles():
    assert POLICIES.get("lowrank") is LowRankPolicy
    p = LowRankPolicy()
    assert p.handles(LayerPlan(rank=8)) and p.handles(LayerPlan(rank=0.5))
    assert not p.handles(LayerPlan(bits=4)) and not p.handles(LayerPlan(sparsity=0.5))
    assert p.needs_calibration(LayerPlan(rank=8, rank_method="whitened"))
    assert not p.needs_calibration(LayerPlan(rank=8))


def _first_output(out):
    return out[0] if isinstance(out, tuple) else next(iter(out.values()))


@pytest.mark.parametrize("spec,a,b", [
    ("random:bert", "encoder.layer.0.attention.self.query", "encoder.layer.1.intermediate.dense"),
    ("random:gpt2", "transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc"),
    ("random:llama", "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"),
])
@pytest.mark.parametrize("method", ["svd", "whitened"])
def test_policy_on_models(spec, a, b, method):
    model = load_model(spec).model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    originals = {n: model.get_submodule(n) for n in (a, b)}
    shapes = {n: tuple(weight_matrix(m).shape) for n, m in originals.items()}
    plan = CompressionPlan({a: LayerPlan(rank=8, rank_method=method),
                            b: LayerPlan(rank=0.25, rank_method=method)})
    LowRankPolicy().apply(model, plan, _calibration())
    for name, frac_or_r in ((a, 8), (b, 0.25)):
        mod = model.get_submodule(name)
        out_f, in_f = shapes[name]
        r = frac_or_r if isinstance(frac_or_r, int) else round(0.25 * min(out_f, in_f))
        assert isinstance(mod, LowRankLinear)
        assert (mod.rank, mod.in_features, mod.out_features) == (r, in_f, out_f)
        assert mod.down.bias is None
        orig_bias = originals[name].bias
        assert (mod.up.bias is None) == (orig_bias is None)
        if orig_bias is not None:
            assert torch.equal(mod.up.bias, orig_bias)
        n_params = sum(p.numel() for p in mod.parameters())
        assert n_params == r * (in_f + out_f) + (out_f if orig_bias is not None else 0)
        assert mod.down.weight.dtype == weight_matrix(originals[name]).dtype
    # nothing else changed
    for n, p in model.named_parameters():
        if not n.startswith((a + ".", b + ".")):
            assert torch.equal(p, before[n]), n
    with torch.no_grad():
        out = _first_output(model(**_calibration(1).batches[0]))
    assert torch.isfinite(out).all()


def test_policy_full_rank_keeps_function_on_conv1d():
    model = load_model("random:gpt2").model
    batch = _calibration(1).batches[0]
    with torch.no_grad():
        ref = _first_output(model(**batch))
    name = "transformer.h.0.mlp.c_fc"  # Conv1D 64 -> 256
    LowRankPolicy().apply(model, CompressionPlan({name: LayerPlan(rank=64)}), None)
    with torch.no_grad():
        out = _first_output(model(**batch))
    assert torch.allclose(out, ref, atol=1e-4)


def test_whitened_beats_svd_on_layer_output():
    name = "encoder.layer.0.intermediate.dense"
    calib = _calibration()
    errs = {}
    for method in ("svd", "whitened"):
        model = load_model("random:bert").model
        orig = model.get_submodule(name)
        gram = calib.input_grams(model, {name: orig})[name]
        w = weight_matrix(orig).clone()
        LowRankPolicy().apply(model, CompressionPlan({name: LayerPlan(rank=8, rank_method=method)}), calib)
        mod = model.get_submodule(name)
        diff = w - mod.up.weight @ mod.down.weight
        errs[method] = torch.trace(diff @ gram @ diff.T).item()
    assert errs["whitened"] < errs["svd"]


def test_rank_too_large_raises_and_leaves_model():
    model = load_model("random:bert").model
    ok, bad = "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key"
    plan = CompressionPlan({ok: LayerPlan(rank=8), bad: LayerPlan(rank=65)})
    with pytest.raises(UserError, match=r"rank 65 exceeds min\(out, in\) = 64"):
        LowRankPolicy().apply(model, plan, None)
    assert not isinstance(model.get_submodule(ok), LowRankLinear)


def test_whitened_without_calibration_raises():
    model = load_model("random:bert").model
    name = "encoder.layer.0.attention.self.query"
    with pytest.raises(UserError, match="calibration"):
        LowRankPolicy().apply(model, CompressionPlan({name: LayerPlan(rank=8, rank_method="whitened")}), None)
    assert not isinstance(model.get_submodule(name), LowRankLinear)
