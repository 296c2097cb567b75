"""Unstructured and N:M weight sparsity: magnitude or Wanda scores, weights zeroed in place.

Contract of `SparsifyPolicy` (see `_base.Policy`): for every plan entry with `sparsity > 0` and a pattern
other than "structured", the named Linear-like layer (nn.Linear or GPT-2 Conv1D) keeps its shape and has
weights set to exactly 0.0 where the mask says so; no other module is touched; biases are left as they are.

Comparison group: weights compete only within their output row (one row of the [out, in] weight), for both
magnitude and Wanda. Wanda (Sun et al. 2023) prescribes this; for magnitude it is a choice that keeps every
output neuron equally dense and makes the count exact and per-row: each row loses exactly
`round(sparsity * in_features)` weights, so the layer loses `out * round(sparsity * in)` in all.

N:M: in each row, every group of M consecutive input weights keeps its N highest-scoring weights. If
`in_features` is not a multiple of M, the last `in_features % M` columns (the tail) stay dense; the layer's
actual share of zeros is then a little below 1 - N/M, and a size evaluator counting N:M storage must count
that tail as dense.

Scores: magnitude = |W|; wanda = |W| * rms(x)[None, :], the per-input-feature RMS activation of the layer's
input over the calibration tokens (`input_norms` of `Calibration.input_grams`, gathered once for all Wanda
layers before any weight changes). Weights that are already zero score 0 and so are pruned first.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies._base import POLICIES, Calibration, Policy, check_weight, input_norms, linear_layer


def prune_mask(score: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None = None) -> torch.Tensor:
    """Boolean keep-mask (True = keep) of `score`'s shape [out, in]; higher scores are kept.

    Unstructured (`n_m` None): each row drops exactly `round(sparsity * in)` of its lowest scores.
    N:M: each row keeps the N highest of every M consecutive columns; a tail of `in % M` columns stays dense
    (`sparsity` is ignored, it is implied by N:M). Ties are broken deterministically by `torch.topk`.
    """
    if score.dim() != 2:
        raise ValueError(f"score must be [out, in], got shape {tuple(score.shape)}")
    rows, cols = score.shape
    mask = torch.ones(rows, cols, dtype=torch.bool, device=score.device)
    if n_m is None:
        k = round(sparsity * cols)
        if k <= 0:
            return mask
        idx = torch.topk(score, k, dim=1, largest=False).indices
        return mask.scatter_(1, idx, False)
    n, m = n_m
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    body = (cols // m) * m
    if body == 0:
        return mask
    groups = score[:, :body].reshape(rows, body // m, m)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=score.device)
    keep.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    mask[:, :body] = keep.reshape(rows, body)
    return mask


def magnitude_score(w: torch.Tensor) -> torch.Tensor:
    """|W| in float32."""
    return w.detach().float().abs()


def wanda_score(w: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
    """|W| * rms[None, :] in float32; `rms` is the per-input-feature RMS activation, length in_features."""
    if rms.shape != (w.shape[1],):
        raise ValueError(f"activation norms of shape {tuple(rms.shape)} do not match weight {tuple(w.shape)}")
    return w.detach().float().abs() * rms.to(device=w.device, dtype=torch.float32)[None, :]


@POLICIES.register("sparsify")
class SparsifyPolicy(Policy):
    """Zero weights of the planned Linear-like layers (unstructured or N:M; magnitude or Wanda)."""

    name = "sparsify"

    def handles(self, entry: LayerPlan) -> bool:
        return entry.prunes and entry.pattern != "structured"

    def needs_calibration(self, entry: LayerPlan) -> bool:
        return entry.prune_method == "wanda"

    def apply(self, model: nn.Module, plan: CompressionPlan, calibration: Calibration | None) -> None:
        entries = self.entries(plan)
        modules = {name: linear_layer(model, name, "sparsity (unstructured or N:M)") for name in entries}
        wanda = [name for name, e in entries.items() if self.needs_calibration(e)]
        norms: dict[str, torch.Tensor] = {}
        if wanda:
            calib = self.require(calibration, wanda[0], "prune_method=wanda")
            norms = input_norms(calib.input_grams(model, {n: modules[n] for n in wanda}))
        with torch.no_grad():
            for name, entry in entries.items():
                w = check_weight(name, modules[name])
                score = wanda_score(w, norms[name]) if name in norms else magnitude_score(w)
                mask = prune_mask(score, entry.sparsity, entry.n_m)
                w.masked_fill_(~mask, 0.0)
