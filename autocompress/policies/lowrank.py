"""Low-rank factorization: a Linear-like layer becomes `LowRankLinear(down, up)`, in -> rank -> out.

Contract of `LowRankPolicy` (see `_base.Policy`): for every plan entry with a `rank`, the named Linear-like
layer (nn.Linear or GPT-2 Conv1D) is replaced by `LowRankLinear(down=Linear(in, r, bias=False),
up=Linear(r, out, bias=<as the original>))` with the original dtype and device, r =
`resolve_rank(entry.rank, out, in)`; the bias is copied unchanged. Its parameter count is r * (in + out)
(+ out for the bias); the policy does not refuse ranks whose factors hold more weights than the original
(r > in*out / (in+out)); the planner should not propose them. A rank above min(out, in) is a `UserError`.
Every entry is checked, and the calibration Gram matrices of all "whitened" entries are gathered, before
any module is replaced, so an error leaves the model unchanged.

Methods (`rank_method`):
  svd: truncated SVD of W, the rank-r W' minimising ||W - W'||_F.
  whitened: activation-aware (SVD-LLM style, truncation-aware whitening). With G = X^T X / tokens of the
    layer's input and G + damp*I = S S^T (Cholesky, S lower), ||X W^T - X W'^T||_F^2 = tokens *
    ||(W - W') S||_F^2 (up to the damping), so the truncated SVD of W S, mapped back by S^{-1}, minimises
    the output error on the calibration activations.
Both split the singular values as sqrt(sigma) into each factor; arithmetic is float64, factors come back
in the weight's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.modules import LowRankLinear, set_module, weight_matrix
from autocompress.plan import CompressionPlan, LayerPlan, resolve_rank
from autocompress.policies._base import POLICIES, Calibration, Policy, check_weight, linear_layer

DEFAULT_DAMP = 1e-2  # relative to the mean of diag(G), as GPTQ's percdamp: keeps S^{-1} tame when G is singular


def _check_rank(w: torch.Tensor, rank: int) -> None:
    if w.dim() != 2:
        raise ValueError(f"weight must be [out, in], got shape {tuple(w.shape)}")
    if not 1 <= rank <= min(w.shape):
        raise ValueError(f"rank {rank} is outside 1..min(out, in) = {min(w.shape)}")


def _split(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = s[:rank].clamp_min(0).sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def factorize_svd(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [rank, in], up [out, rank]) with up @ down the best rank-`rank` approximation of w [out, in]
    in the Frobenius norm. Computed in float64; returned in w's dtype and device."""
    _check_rank(w, rank)
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    down, up = _split(u, s, vh, rank)
    return down.to(w.dtype), up.to(w.dtype)


def whitening(gram: torch.Tensor, damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """Lower-triangular S (float64) with S S^T = gram + lam*I, lam = damp * mean(diag(gram)) (1 if that is 0).
    If the Cholesky factorisation still fails (gram not positive semi-definite numerically), lam grows x10."""
    g = gram.detach().double()
    g = (g + g.T) / 2
    scale = g.diagonal().mean().item()
    lam = damp * scale if scale > 0 else 1.0
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    for _ in range(8):
        s, info = torch.linalg.cholesky_ex(g + lam * eye)
        if int(info) == 0:
            return s
        lam *= 10
    raise ValueError("the calibration Gram matrix is not positive semi-definite, even after damping")


def factorize_whitened(w: torch.Tensor, gram: torch.Tensor, rank: int,
                       damp: float = DEFAULT_DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [rank, in], up [out, rank]) minimising ||X w^T - X (up @ down)^T||_F over rank-`rank` products,
    where gram = X^T X / tokens ([in, in]) stands in for X. With S S^T = gram + damp-term (see `whitening`)
    and W S = U Sig V^T: up = U_r sqrt(Sig_r), down = sqrt(Sig_r) V_r^T S^{-1}. Float64 inside; w's dtype out."""
    _check_rank(w, rank)
    if gram.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"gram of shape {tuple(gram.shape)} does not match weight {tuple(w.shape)}")
    s_low = whitening(gram.to(w.device), damp)
    u, sig, vh = torch.linalg.svd(w.detach().double() @ s_low, full_matrices=False)
    down_w, up = _split(u, sig, vh, rank)
    # down = down_w @ S^{-1}, i.e. the solution X of X S = down_w
    down = torch.linalg.solve_triangular(s_low, down_w, upper=False, left=False)
    return down.to(w.dtype), up.to(w.dtype)


def low_rank_module(module: nn.Module, down: torch.Tensor, up: torch.Tensor) -> LowRankLinear:
    """The `LowRankLinear` for `module` with the given factors and `module`'s bias, dtype and device."""
    w = weight_matrix(module)
    rank, n_in = down.shape
    n_out = up.shape[0]
    bias = getattr(module, "bias", None)
    kw = dict(device=w.device, dtype=w.dtype)
    first = nn.Linear(n_in, rank, bias=False, **kw)
    second = nn.Linear(rank, n_out, bias=bias is not None, **kw)
    with torch.no_grad():
        first.weight.copy_(down)
        second.weight.copy_(up)
        if bias is not None:
            second.bias.copy_(bias.detach())
    return LowRankLinear(first, second)


@POLICIES.register("lowrank")
class LowRankPolicy(Policy):
    """Replace the planned Linear-like layers by rank-r factorizations (plain or whitened SVD)."""

    name = "lowrank"

    def handles(self, entry: LayerPlan) -> bool:
        return entry.factorizes

    def needs_calibration(self, entry: LayerPlan) -> bool:
        return entry.rank_method == "whitened"

    def apply(self, model: nn.Module, plan: CompressionPlan, calibration: Calibration | None) -> None:
        entries = self.entries(plan)
        modules = {name: linear_layer(model, name, "rank") for name in entries}
        ranks: dict[str, int] = {}
        for name, entry in entries.items():
            w = check_weight(name, modules[name])
            n_out, n_in = w.shape
            rank = resolve_rank(entry.rank, n_out, n_in)
            if rank > min(n_out, n_in):
                raise UserError(f"plan layer {name!r}: rank {rank} exceeds min(out, in) = {min(n_out, n_in)} "
                                f"(shape {n_out}x{n_in}); use a smaller rank or a fraction in (0, 1)")
            ranks[name] = rank
        whitened = [name for name, e in entries.items() if self.needs_calibration(e)]
        grams: dict[str, torch.Tensor] = {}
        if whitened:
            calib = self.require(calibration, whitened[0], "rank_method=whitened")
            grams = calib.input_grams(model, {n: modules[n] for n in whitened})
        with torch.no_grad():
            for name in entries:
                mod = modules[name]
                w = weight_matrix(mod)
                if name in grams:
                    down, up = factorize_whitened(w, grams[name], ranks[name])
                else:
                    down, up = factorize_svd(w, ranks[name])
                set_module(model, name, low_rank_module(mod, down, up))
