"""Tests for autocompress.policies.sparsify: masks, scores, and the policy on Linear and Conv1D models."""

from __future__ import annotations

import pytest
import torch

from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.modules import weight_matrix
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies._base import POLICIES, Calibration
from autocompress.policies.sparsify import SparsifyPolicy, magnitude_score, prune_mask, wanda_score


def _calibration(seed: int = 0) -> Calibration:
    g = torch.Generator().manual_seed(seed)
    return Calibration([{"input_ids": torch.randint(0, 1000, (4, 16), generator=g),
                         "attention_mask": torch.ones(4, 16, dtype=torch.long)}])


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("cols", [64, 37])
def test_unstructured_exact_count_per_row(sparsity, cols):
    torch.manual_seed(0)
    score = torch.rand(12, cols)
    mask = prune_mask(score, sparsity, None)
    assert mask.dtype == torch.bool and mask.shape == score.shape
    removed = (~mask).sum(dim=1)
    assert (removed == round(sparsity * cols)).all()
    # the removed ones are the lowest of their row
    for r in range(score.shape[0]):
        assert score[r][~mask[r]].max() <= score[r][mask[r]].min()


def test_unstructured_zero_sparsity_keeps_all():
    assert prune_mask(torch.rand(3, 8), 0.0, None).all()


@pytest.mark.parametrize("n_m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("cols", [32, 35])
def test_n_m_every_group(n_m, cols):
    n, m = n_m
    torch.manual_seed(1)
    score = torch.rand(6, cols)
    mask = prune_mask(score, 1 - n / m, n_m)
    body = cols // m * m
    groups = mask[:, :body].reshape(6, -1, m)
    assert (groups.sum(dim=2) == n).all()
    assert mask[:, body:].all()  # the tail stays dense
    sgroups = score[:, :body].reshape(6, -1, m)
    kept_min = torch.where(groups, sgroups, torch.inf).min(dim=2).values
    dropped_max = torch.where(~groups, sgroups, -torch.inf).max(dim=2).values
    assert (dropped_max <= kept_min).all()


def test_already_zero_weights_are_pruned_first():
    w = torch.randn(4, 8).abs() + 1.0
    w[:, :3] = 0.0
    mask = prune_mask(magnitude_score(w), 0.25, None)  # 2 removed per row, both among the zeros
    assert (~mask[:, :3]).sum(dim=1).eq(2).all() and mask[:, 3:].all()
    mask = prune_mask(magnitude_score(w), 0.5, None)  # 4 removed per row: the 3 zeros and 1 more
    assert not mask[:, :3].any() and (~mask[:, 3:]).sum(dim=1).eq(1).all()


def _skewed_correlated(n_tok=512, n_in=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g) * 0.3 + torch.eye(n_in)
    scales = torch.logspace(-1.5, 1.0, n_in)[torch.randperm(n_in, generator=g)]
    x = (torch.randn(n_tok, n_in, generator=g) @ mix) * scales
    w = torch.randn(24, n_in, generator=g)
    return x, w


def test_wanda_differs_and_reconstructs_better():
    x, w = _skewed_correlated()
    rms = (x.pow(2).mean(dim=0)).sqrt()
    m_mag = prune_mask(magnitude_score(w), 0.5, None)
    m_wanda = prune_mask(wanda_score(w, rms), 0.5, None)
    assert not torch.equal(m_mag, m_wanda)
    y = x @ w.T
    err_mag = (y - x @ (w * m_mag).T).norm()
    err_wanda = (y - x @ (w * m_wanda).T).norm()
    assert err_wanda < 0.8 * err_mag
    # the same for 2:4
    m_mag = prune_mask(magnitude_score(w), 0.5, (2, 4))
    m_wanda = prune_mask(wanda_score(w, rms), 0.5, (2, 4))
    assert (y - x @ (w * m_wanda).T).norm() < (y - x @ (w * m_mag).T).norm()


def test_registered_and_handles():
    assert POLICIES.get("sparsify") is SparsifyPolicy
    p = SparsifyPolicy()
    assert p.handles(LayerPlan(sparsity=0.5))
    assert p.handles(LayerPlan(pattern="2:4"))
    assert not p.handles(LayerPlan(sparsity=0.5, pattern="structured"))
    assert not p.handles(LayerPlan(bits=4))
    assert p.needs_calibration(LayerPlan(sparsity=0.5, prune_method="wanda"))
    assert not p.needs_calibration(LayerPlan(sparsity=0.5))


@pytest.mark.parametrize("spec,layers", [
    ("random:bert", ["encoder.layer.0.attention.self.query", "encoder.layer.1.intermediate.dense"]),
    ("random:gpt2", ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"]),
    ("random:llama", ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]),
])
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_policy_on_models(spec, layers, method):
    lm = load_model(spec)
    model = lm.model
    before = _weights(model)
    a, b = layers
    plan = CompressionPlan({a: LayerPlan(sparsity=0.5, prune_method=method),
                            b: LayerPlan(pattern="2:4", prune_method=method)})
    SparsifyPolicy().apply(model, plan, _calibration())
    wa = weight_matrix(model.get_submodule(a))
    wb = weight_matrix(model.get_submodule(b))
    assert ((wa == 0).sum(dim=1) == round(0.5 * wa.shape[1])).all()
    assert ((wb == 0).reshape(wb.shape[0], -1, 4).sum(dim=2) == 2).all()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"{a}.weight", f"{b}.weight"}
    # kept weights are untouched
    for name in (a, b):
        new, old = model.get_submodule(name).weight, before[f"{name}.weight"]
        assert torch.equal(new[new != 0], old[new != 0])
    with torch.no_grad():
        out = model(**_calibration(1).batches[0])
    first = out[0] if isinstance(out, tuple) else next(iter(out.values()))
    assert torch.isfinite(first).all()


def test_wanda_uses_activations_on_model():
    name = "encoder.layer.0.attention.output.dense"
    plan = lambda m: CompressionPlan({name: LayerPlan(sparsity=0.5, prune_method=m)})  # noqa: E731
    models = {}
    for method in ("magnitude", "wanda"):
        model = load_model("random:bert").model
        SparsifyPolicy().apply(model, plan(method), _calibration())
        models[method] = weight_matrix(model.get_submodule(name)) != 0
    assert not torch.equal(models["magnitude"], models["wanda"])


def test_wanda_without_calibration_raises():
    model = load_model("random:bert").model
    before = _weights(model)
    plan = CompressionPlan({"encoder.layer.0.attention.self.query": LayerPlan(sparsity=0.5, prune_method="wanda")})
    with pytest.raises(UserError, match="calibration"):
        SparsifyPolicy().apply(model, plan, None)
    with pytest.raises(UserError, match="calibration"):
        SparsifyPolicy().apply(model, plan, Calibration([]))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_unknown_layer_raises():
    model = load_model("random:bert").model
    with pytest.raises(UserError, match="not a module"):
        SparsifyPolicy().apply(model, CompressionPlan({"nope.dense": LayerPlan(sparsity=0.5)}), None)
    with pytest.raises(UserError, match="not a Linear-like"):
        SparsifyPolicy().apply(model, CompressionPlan({"encoder.layer.0": LayerPlan(sparsity=0.5)}), None)
