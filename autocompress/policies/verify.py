"""Check that a compressed model is exactly what its plan says (used by tests and benchmarks): quantized weights
against the grids the quantize policy recorded, masks, ranks, structures, activation and smoothing hooks."""

from __future__ import annotations

import math

import torch
from torch import nn

from autocompress.models import ModelInfo, inspect_model
from autocompress.modules import LowRankLinear, weight_matrix, weight_modules
from autocompress.plan import CompressionPlan, LayerPlan, resolve_rank
from autocompress.policies.quantize import (
    ACT_ATTR, GRID_ATTR, QuantGrid, act_quant_hook, dequantize, qrange, quantize_int,
)
from autocompress.policies.smooth import SMOOTH_ATTR, smooth_hook


def _grid_violation(module: nn.Module, w: torch.Tensor, entry: LayerPlan) -> str | None:
    """Is `w` (the [out, in] weight of `module`) exactly on the grid recorded for it, and is that grid the
    planned one? The recorded `QuantGrid` must have the entry's bits, group_size and symmetry, one positive
    float16-exact scale and one integer zero point in the grid's range (0 when symmetric) per row and group,
    and every weight must equal dequantize(quantize_int(w)) on it, in w's dtype: what the exporter packs."""
    grid = getattr(module, GRID_ATTR, None)
    if entry.quant_method == "kmeans":
        from autocompress.policies.kmeans import codebook_violation

        return codebook_violation(w, entry, grid)
    if not isinstance(grid, QuantGrid):
        return "quantized by the plan but has no recorded grid (_autocompress_grid)"
    if entry.gguf_type is not None or grid.gguf_type is not None:
        return _ggml_violation(w, entry, grid)
    planned = (entry.bits, entry.group_size, entry.symmetric)
    if (grid.bits, grid.group_size, grid.symmetric) != planned:
        return (f"recorded grid (bits, group_size, symmetric) = {(grid.bits, grid.group_size, grid.symmetric)}, "
                f"planned {planned}")
    in_f = w.shape[1]
    groups = 1 if grid.group_size is None else -(-in_f // max(1, min(grid.group_size, in_f)))
    scale, zero = grid.scale, grid.zero
    if tuple(scale.shape) != (w.shape[0], groups) or tuple(zero.shape) != (w.shape[0], groups):
        return f"recorded grid has scales {tuple(scale.shape)}, needs {(w.shape[0], groups)}"
    if not bool((scale > 0).all()) or not torch.equal(scale.to(torch.float16).to(scale.dtype), scale):
        return "recorded grid has scales that are not positive float16 values"
    qmin, qmax = qrange(grid.bits, grid.symmetric)
    lo, hi = (0, 0) if grid.symmetric else (qmin, qmax)
    if not torch.equal(zero.round(), zero) or bool((zero < lo).any() or (zero > hi).any()):
        return f"recorded grid has zero points that are not integers in [{lo}, {hi}]"
    q = quantize_int(w, scale, zero, grid.bits, grid.group_size, grid.symmetric)
    off = dequantize(q, scale, zero, grid.group_size).to(w.dtype) != w
    if bool(off.any()):
        return f"{int(off.sum())} of {w.numel()} weights are off the recorded {grid.bits}-bit grid"
    return None


def _ggml_violation(w: torch.Tensor, entry: LayerPlan, grid: QuantGrid) -> str | None:
    """The ggml-block form of `_grid_violation` (policies/ggml.py): the recorded grid is the planned ggml type,
    its fp16 block scales (and minimums) are float16 values, and every weight equals the value its stored integer
    (in the type's range) gives on that grid, in w's dtype: what the GGUF writer packs."""
    from autocompress.policies.ggml import ggml_codes, ggml_dequantize, levels

    if grid.gguf_type != entry.gguf_type:
        return f"recorded ggml type {grid.gguf_type}, planned {entry.gguf_type}"
    for name, t in (("scales", grid.scale), ("minimums", grid.minimum)):
        if t is not None and not torch.equal(t.to(torch.float16).to(t.dtype), t):
            return f"recorded grid has {name} that are not float16 values"
    codes = ggml_codes(w, grid)
    top = levels(grid.gguf_type)
    low = -top if grid.gguf_type == "Q8_0" else 0
    if bool((codes < low).any() or (codes > top).any()):
        return f"stored integers outside [{low}, {top}] of {grid.gguf_type}"
    off = ggml_dequantize(codes, grid).to(w.dtype) != w
    if bool(off.any()):
        return f"{int(off.sum())} of {w.numel()} weights are off the recorded {grid.gguf_type} grid"
    return None


def _hooked(module: nn.Module, attr: str, hook) -> bool:
    """`module` carries `attr` and has `hook` among its forward pre-hooks."""
    return getattr(module, attr, None) is not None and any(h is hook for h in module._forward_pre_hooks.values())


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
    every quantized weight (each factor of a factorized layer) lies exactly on the grid recorded for it and
    that grid is the planned one (`_grid_violation`), every pruned row/group has its zeros, every factorized
    layer its rank, every structure its planned number of units, W8A8 layers their int8 activation hook, and
    smoothed layers their smoothing vector (float16-exact, one per input) and its hook. Linear in the number
    of weights."""
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
        parts = weight_modules(module)
        for part in parts:
            w = weight_matrix(part)
            if entry.prunes and not math.isclose(entry.sparsity, 0.0):
                issue = _sparsity_violation(w, entry)
                if issue:
                    problems.append(f"{name}: {issue}")
            if entry.bits is not None:
                issue = _grid_violation(part, w, entry)
                if issue:
                    problems.append(f"{name}: {issue}")
        if entry.act_bits is not None:
            if not all(getattr(p, ACT_ATTR, None) == entry.act_bits and _hooked(p, ACT_ATTR, act_quant_hook)
                       for p in parts):
                problems.append(f"{name}: no int{entry.act_bits} activation quantization")
        if entry.smooth is not None:
            s = getattr(module, SMOOTH_ATTR, None)
            in_f = weight_matrix(parts[0]).shape[1]
            if s is None or not _hooked(module, SMOOTH_ATTR, smooth_hook):
                problems.append(f"{name}: not smoothed (no recorded smoothing vector and hook)")
            elif tuple(s.shape) != (in_f,) or not torch.equal(s.to(torch.float16).to(s.dtype), s):
                problems.append(f"{name}: its smoothing vector is not {in_f} float16 values")
    return problems
