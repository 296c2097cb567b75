"""Straight-through pieces for training on a fixed grid: fake-quantized weights and int8 activations.

The forward values are exactly those of `autocompress.policies.quantize` (so a constrained model computes
what the compressed model computes); the backward passes the gradient straight through `round()`, which
otherwise has none.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.policies.quantize import QuantGrid, fake_quant_act_int8, qrange


class _FakeQuant(torch.autograd.Function):
    """(clamp(round(w / s) + z, qmin, qmax) - z) * s with s, z broadcast over w's grouped view; the gradient
    passes straight through."""

    @staticmethod
    def forward(ctx, w, scale, zero, qmin: int, qmax: int):  # noqa: D401 - autograd signature
        q = torch.div(w, scale).round_()
        if zero is not None:
            q.add_(zero)
        q.clamp_(qmin, qmax)
        if zero is not None:
            q.sub_(zero)
        return q.mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


class _StraightThrough(torch.autograd.Function):
    """Forward: the precomputed `q` (exactly); backward: the gradient goes to `x` unchanged."""

    @staticmethod
    def forward(ctx, x, q):  # noqa: D401 - autograd signature
        return q

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def act_quant_hook_ste(module: nn.Module, args: tuple) -> tuple | None:
    """`act_quant_hook` with the same forward values and a straight-through gradient (round() has none)."""
    if args and torch.is_tensor(args[0]) and args[0].is_floating_point():
        x = args[0]
        return (_StraightThrough.apply(x, fake_quant_act_int8(x.detach())), *args[1:])
    return None


def swap_act_hooks(model: nn.Module, old, new) -> int:
    """Replace the forward pre-hook `old` by `new` in place (same hook ids and order); the number replaced."""
    n = 0
    for m in model.modules():
        for hook_id, fn in list(m._forward_pre_hooks.items()):
            if fn is old:
                m._forward_pre_hooks[hook_id] = new
                n += 1
    return n


class FakeQuant(nn.Module):
    """Parametrization of a quantized weight in its stored layout ([out, in], or [in, out] for a GPT-2 Conv1D)
    onto `grid` (recorded in the [out, in] layout). Scale and zero are kept per group and broadcast over a
    grouped view of the weight when the groups tile it; otherwise expanded to one value per weight."""

    def __init__(self, grid: QuantGrid, stored_shape: tuple[int, int], transposed: bool) -> None:
        super().__init__()
        self.qmin, self.qmax = qrange(grid.bits, grid.symmetric)
        self.shape = stored_shape
        n_in = stored_shape[0] if transposed else stored_shape[1]
        g = n_in if grid.group_size is None else max(1, min(grid.group_size, n_in))
        scale, zero = grid.scale.float(), (None if grid.symmetric else grid.zero.float())
        if n_in % g == 0:  # grouped view: [out, G, g] (Linear) or [G, g, out] (Conv1D)
            groups = n_in // g
            if transposed:
                self.view = (groups, g, stored_shape[1])
                prep = lambda t: t.t().contiguous().reshape(groups, 1, -1)  # noqa: E731
            else:
                self.view = (stored_shape[0], groups, g)
                prep = lambda t: t.reshape(t.shape[0], groups, 1)  # noqa: E731
        else:
            self.view = stored_shape
            prep = lambda t: per_weight(t, g, n_in, transposed)  # noqa: E731
        self.register_buffer("scale", prep(scale))
        self.register_buffer("zero", None if zero is None else prep(zero))

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        w = stored.reshape(self.view).float()
        return _FakeQuant.apply(w, self.scale, self.zero, self.qmin, self.qmax).reshape(self.shape).to(stored.dtype)


def per_weight(t: torch.Tensor, g: int, n_in: int, transposed: bool) -> torch.Tensor:
    """[out, groups] per-group values -> one per weight, in the stored layout."""
    full = t.repeat_interleave(g, dim=1)[:, :n_in]
    return full.t().contiguous() if transposed else full
