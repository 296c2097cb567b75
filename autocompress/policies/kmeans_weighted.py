"""Sensitivity-weighted k-means (`kmeans_weighting: activation`): SqueezeLLM's weighting with a data-aware proxy.

SqueezeLLM (Kim et al., 2023) clusters each weight matrix by k-means weighted per weight by its sensitivity, the
diagonal Fisher information (squared gradients of the loss). Here the sensitivity is the proxy that needs no
gradients: a layer's output error from changing w_ij by d is x_j * d, whose mean square over the calibration
tokens is d^2 * E[x_j^2]. So weight w_ij counts in the objective sum_ij s_j (w_ij - c(w_ij))^2 with
s_j = diag(X^T X)_j / tokens, the diagonal of the Gram matrix that GPTQ's Hessian and Wanda's norms also read
(`Calibration.input_grams`: gathered once, memoized on the base model, block by block under sequential
calibration). The weighted Lloyd step moves each centroid to sum(s w) / sum(s) over its weights; assignment
stays nearest centroid (with one scalar weight per value, in 1-D, that is still the best assignment), so the
codebook contract of kmeans.py (sorted fp16 centroids, each weight its nearest one, exact zeros kept) and the
packed export are unchanged.

Seeds (`weighted_kmeans_1d`). Weighted Lloyd stalls in poor local optima when a few channels carry most of the
weight: from the linear seeds alone it ended above the unweighted codebook's weighted error on some test rows.
So it runs from three deterministic starts and keeps, per codebook, the result of least weighted error:
the unweighted k-means result (Lloyd only lowers the objective, so the kept codebook is never worse, before
float16 rounding, than the unweighted one on the weighted error), the linear seeds, and the weighted
quantiles (the values at cumulative weight (i + 1/2) / k). No randomness; about four times the clustering work
of the unweighted method.

Memo (memo.py): on the unchanged base model a weighted result depends only on the weight, the Gram diagonal and
the entry, so it is kept under `quantize.memo_key` (which names the weighting). `quantize._remembered` keeps
integers on a grid; a codebook has none, so `remembered_codebook` keeps the centroid indices (uint8: bits <= 8)
and the centroids instead, and rebuilds the weight as `codebook_values(indices, book)`, which is exactly how
`cluster` makes it: a remembered result is bit-identical to a computed one.
"""

from __future__ import annotations

from typing import Hashable

import torch

from autocompress.plan import LayerPlan
from autocompress.policies.kmeans import (ITERATIONS, Codebook, codebook_indices, codebook_values, linear_seeds,
                                          lloyd, pin_centroids, pin_rows, quantize_kmeans)


def weighted_kmeans_1d(x: torch.Tensor, weights: torch.Tensor, k: int, pin_zero: torch.Tensor | None = None,
                       iterations: int = ITERATIONS) -> torch.Tensor:
    """k sorted centroids (float32 [B, k]) of each row of `x` [B, n] minimizing sum s (x - c(x))^2 with the
    weights `weights` (>= 0, x's shape), by weighted Lloyd from three starts, the best kept per row (module
    docstring); `pin_zero` as in `kmeans_1d`. A row whose weights sum to 0 is clustered unweighted."""
    xs, order = torch.sort(x.detach().reshape(x.shape[0], -1).float(), dim=1)
    rows, n = xs.shape
    if n == 0:
        return torch.zeros(rows, k)
    pin = pin_rows(xs, pin_zero)
    s = torch.gather(weights.detach().reshape(rows, -1).double().clamp_min(0), 1, order)
    s = torch.where(s.sum(1, keepdim=True) > 0, s, torch.ones_like(s))
    linear = linear_seeds(xs, k, pin)
    cum = torch.cumsum(s, 1)
    at = (torch.arange(k, dtype=torch.float64)[None, :] + 0.5) / k * cum[:, -1:]
    quantiles = pin_centroids(torch.gather(xs, 1, torch.searchsorted(cum, at).clamp(max=n - 1)), pin)
    starts = (lloyd(xs, linear, pin, iterations), linear, quantiles)
    found = torch.stack([lloyd(xs, c, pin, iterations, s) for c in starts])  # [3, B, k]
    errors = torch.stack([_weighted_error(xs, s, c) for c in found])  # [3, B]
    return found[errors.argmin(0), torch.arange(rows)]


def _weighted_error(xs: torch.Tensor, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """sum s (x - nearest centroid)^2 per row (float64 [B])."""
    idx = torch.searchsorted((c[:, 1:] + c[:, :-1]).contiguous() / 2, xs)
    return (s * (xs.double() - torch.gather(c, 1, idx).double()) ** 2).sum(1)


def activation_importance(gram: torch.Tensor | None, entry: LayerPlan, in_features: int) -> torch.Tensor:
    """s_j = diag(gram)_j (float32 [in], >= 0, non-finite values as 0): each input channel's mean squared
    activation. `gram` must be the layer's [in, in] input Gram matrix (the quantize policy gathers it for every
    entry with `kmeans_weighting: activation`); ValueError if it is missing or of the wrong size."""
    if gram is None or gram.shape != (in_features, in_features):
        got = None if gram is None else tuple(gram.shape)
        raise ValueError(f"kmeans_weighting {entry.kmeans_weighting} needs the layer's input Gram matrix "
                         f"[{in_features}, {in_features}], got {got}")
    d = gram.detach().diagonal().float().cpu()
    return torch.where(torch.isfinite(d), d, torch.zeros_like(d)).clamp_min(0)


def remembered_codebook(memo, key: Hashable, w: torch.Tensor, entry: LayerPlan,
                        gram: torch.Tensor | None) -> tuple[torch.Tensor, Codebook]:
    """`quantize_kmeans(w, entry, gram)` through `memo` under `key` (module docstring). `gram` may be None only
    when `key` is in memo.results."""
    fresh: list[tuple[torch.Tensor, Codebook]] = []

    def compute() -> tuple[torch.Tensor, ...]:
        q, book = quantize_kmeans(w, entry, gram)
        fresh.append((q, book))
        return codebook_indices(q, book).to(torch.uint8), book.centroids.clone()

    codes, centroids = memo.result(key, compute)
    if fresh:
        return fresh[0]
    book = Codebook(entry.bits, entry.group_size, centroids.clone())
    return codebook_values(codes.to(torch.int32), book).to(w.dtype), book
