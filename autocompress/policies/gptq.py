"""GPTQ (Frantar et al., 2022): error-correcting quantization through the inverse Hessian of a layer's inputs.

`quantize_gptq` rounds onto a grid given by a rule: the standard integer grid of `quantize.py` (`_IntRule`,
the default) or ggml's blocks (`ggml.GgmlRule`). The quantize policy (quantize.py) calls it through its
"gptq" quantizer; `autocompress.policies.quantize.quantize_gptq` is this function.
"""

from __future__ import annotations

import torch

from autocompress.policies.quantize import _fake, _group_len, qrange, quant_params


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, raising the damping until it factors."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    mean_diag = h.diagonal().mean().clamp_min(1e-12)
    for attempt in range(6):
        d = damp if attempt == 0 else max(damp, 1e-4) * 10 ** attempt
        lower, info = torch.linalg.cholesky_ex(h + d * mean_diag * eye)
        if info == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if info == 0:
                return upper
    raise ValueError("GPTQ: the calibration Hessian is not positive definite even with heavy damping")


def quantize_gptq(w: torch.Tensor, gram: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                  damp: float = 0.01, block_size: int = 128, return_params: bool = False, act_order: bool = False,
                  rule=None):
    """GPTQ (Frantar et al., 2022): quantize `w` [out, in] column by column, spreading each column's error over
    the columns not yet quantized through the inverse Hessian H = `gram` [in, in] (X^T X / tokens), so that
    ||X W^T - X Q^T|| is small rather than ||W - Q||. Lazy batches of `block_size` columns; H is damped by
    damp * mean(diag H). Group scales are computed when the first column of a group is reached, on the
    error-updated weights (per-channel scales, group_size None, once up front). Dead inputs (diag H == 0)
    are quantized like RTN without spreading error. Weights exactly 0 in `w` (pruned) quantize to exactly 0
    and their error is spread like any other. The result is on the grid of the module doc (in w's dtype; at
    most 2^bits values per group); with `return_params` it is `(q, scale, zero)` with scale/zero as
    `quant_params` lays them out, so `quantize_int` recovers the integers. Does not modify `w`.

    `act_order`: columns are processed in descending diag(H) order (the inputs with the most energy first), with
    static groups: every group's scale is computed up front from the original weights of its consecutive
    columns, so the grid stays the standard one of the module doc (what the packed export and the int4
    kernels expect), only the order in which the columns are rounded changes.

    `rule`: another grid to round onto (`ggml.GgmlRule`, ggml's blocks of 32; group_size must be 32); with
    `return_params` the result is then `(Q, grid)`."""
    out_f, in_f = w.shape
    W = w.detach().float().clone()
    rule = rule or _IntRule(bits, group_size, symmetric)
    pruned = W == 0 if rule.keeps_zeros else torch.zeros_like(W, dtype=torch.bool)
    H = gram.detach().to(device=W.device, dtype=torch.float32).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    gs = _group_len(in_f, group_size)
    dynamic = gs < in_f and not act_order  # group scales taken as the loop reaches each group
    if dynamic:  # blocks hold whole groups, so a group's scale sees every update made before it
        block_size = max(gs, block_size // gs * gs)
        params = rule.empty(out_f, -(-in_f // gs))
    else:
        params = rule.params(W)
    order = torch.argsort(H.diagonal(), descending=True, stable=True) if act_order else None
    if order is not None:
        W, H, pruned = W[:, order], H[order][:, order], pruned[:, order]
    group_of = ((order if order is not None else torch.arange(in_f)) // gs).tolist()
    Hinv = _inverse_cholesky(H, damp)
    Q = torch.empty_like(W)
    for b0 in range(0, in_f, block_size):
        b1 = min(b0 + block_size, in_f)
        W1, Hb = W[:, b0:b1].clone(), Hinv[b0:b1, b0:b1]
        err = torch.zeros_like(W1)
        for j in range(b1 - b0):
            col = b0 + j
            g = group_of[col]
            if dynamic and col % gs == 0:
                grp = W1[:, j:j + gs].masked_fill(pruned[:, col:col + gs], 0.0)
                rule.assign(params, g, rule.params(grp, whole=True))
            x = W1[:, j]
            q = rule.fake(x, params, g).masked_fill(pruned[:, col], 0.0)
            e = (x - q) / Hb[j, j]
            W1[:, j + 1:] -= e[:, None] * Hb[j, j + 1:][None, :]
            Q[:, col], err[:, j] = q, e
        W[:, b1:] -= err @ Hinv[b0:b1, b1:]
    if order is not None:
        Q = Q[:, torch.argsort(order)]
    Q = Q.to(w.dtype)
    return (Q, *rule.returned(params)) if return_params else Q


class _IntRule:
    """The standard grid as `quantize_gptq`'s rounding rule (see `ggml.GgmlRule` for the interface)."""

    keeps_zeros = True  # 0.0 is on every group's grid, so pruned weights stay pruned

    def __init__(self, bits: int, group_size: int | None, symmetric: bool) -> None:
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        self.qmin, self.qmax = qrange(bits, symmetric)

    def params(self, w: torch.Tensor, whole: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return quant_params(w, self.bits, None if whole else self.group_size, self.symmetric)

    def empty(self, out_f: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(out_f, groups), torch.zeros(out_f, groups)

    def assign(self, params: tuple, g: int, one: tuple) -> None:
        params[0][:, g], params[1][:, g] = one[0][:, 0], one[1][:, 0]

    def fake(self, x: torch.Tensor, params: tuple, g: int) -> torch.Tensor:
        return _fake(x, params[0][:, g], params[1][:, g], self.qmin, self.qmax)

    def returned(self, params: tuple) -> tuple:
        return params
