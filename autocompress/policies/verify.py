"""Check that a compressed model is exactly what its plan says (used by tests and before export)."""

from __future__ import annotations

import math

import torch
from torch import nn

from autocompress.models import ModelInfo, inspect_model
from autocompress.modules import LowRankLinear, weight_matrix, weight_modules
from autocompress.plan import CompressionPlan, LayerPlan, resolve_rank


def _distinct_per_row(block: torch.Tensor) -> torch.Tensor:
    """Number of distinct values in each row of a 2-D tensor."""
    s = block.sort(dim=-1).values
    return 1 + (s[..., 1:] != s[..., :-1]).sum(-1)


def _grid_violation(w: torch.Tensor, entry: LayerPlan) -> str | None:
    """More than 2**bits distinct values in some quantization group?"""
    g = w.shape[1] if entry.group_size is None else min(entry.group_size, w.shape[1])
    full = (w.shape[1] // g) * g
    counts = [_distinct_per_row(w[:, :full].reshape(-1, g))]
    if full < w.shape[1]:
        counts.append(_distinct_per_row(w[:, full:]))
    worst = int(torch.cat(counts).max())
    return None if worst <= 2 ** entry.bits else f"a group of {g} has {worst} values > 2^{entry.bits}"


def _sparsity_violation(w: torch.Tensor, entry: LayerPlan) -> str | None:
    zeros = w == 0
    nm = entry.n_m
    if nm is not None:
        n, m = nm
        cols = (w.shape[1] // m) * m
        kept = (~zeros[:, :cols]).reshape(w.shape[0], -1, m).sum(-1)
        worst = int(kept.max()) if kept.numel() else 0
        return None if worst <= n else f"a group of {m} keeps {worst} weights > {n}"
    need = round(entry.sparsity * w.shape[1])
    fewest = int(zeros.sum(1).min())
    return None if fewest >= need else f"a row has {fewest} zeros < {need} planned"


def plan_violations(model: nn.Module, plan: CompressionPlan, before: ModelInfo) -> list[str]:
    """Every way `model` differs from what `plan` demands of the model described by `before`
    (its inventory taken before compression). An empty list means the plan is realized exactly:
    every quantized group has at most 2**bits values, every pruned row/group its zeros, every factorized
    layer its rank, every structure its planned number of units, W8A8 layers their activation hook, and
    smoothed layers their smoothing vector."""
    problems: list[str] = []
    after = inspect_model(model, before.task)
    for name, entry in plan.layers.items():
        if name in before.structures:
            s = before.structures[name]
            want = s.units - min(round(entry.sparsity * s.units), s.units - 1)
            got = after.structures[name].units if name in after.structures else None
            if got != want:
                problems.append(f"{name}: {got} {s.kind} left, planned {want}")
            continue
        module = model.get_submodule(name)
        if entry.factorizes:
            if not isinstance(module, LowRankLinear):
                problems.append(f"{name}: not factorized")
            else:
                li = before.layers[name]
                # the rank resolves on the layer's shape as it entered factorization (after structured pruning)
                want = resolve_rank(entry.rank, module.out_features, module.in_features)
                if module.rank != want:
                    problems.append(f"{name}: rank {module.rank}, planned {want} (layer {li.out_features}x"
                                    f"{li.in_features})")
        for part in weight_modules(module):
            w = weight_matrix(part)
            if entry.prunes and not math.isclose(entry.sparsity, 0.0):
                issue = _sparsity_violation(w, entry)
                if issue:
                    problems.append(f"{name}: {issue}")
            if entry.bits is not None:
                issue = _grid_violation(w, entry)
                if issue:
                    problems.append(f"{name}: {issue}")
        if entry.act_bits is not None and getattr(module, "_autocompress_act_bits", None) != entry.act_bits:
            parts = weight_modules(module)
            if not all(getattr(p, "_autocompress_act_bits", None) == entry.act_bits for p in parts):
                problems.append(f"{name}: no int{entry.act_bits} activation quantization")
        if entry.smooth is not None and getattr(module, "_autocompress_smooth", None) is None:
            problems.append(f"{name}: not smoothed (no recorded smoothing vector)")
    return problems
