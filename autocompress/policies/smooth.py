"""Activation smoothing (SmoothQuant, Xiao et al., 2023) for layers with int8 activations (`LayerPlan.smooth`).

A few input channels of a transformer's Linears carry activations far larger than the rest; a per-token int8
grid spends its range on them and rounds every other channel coarsely. Smoothing moves that difficulty into
the weights, which are quantized per output channel and take it far better: for input channel j,

    s_j = max|x_j|^alpha / max|W_j|^(1 - alpha),     x' = x / s,     W' = W diag(s),

so x' W'^T = x W^T exactly before any quantization. max|x_j| is taken over the calibration batches' unmasked
tokens (`Calibration.input_absmax`), max|W_j| over the column j of the weight [out, in] as the earlier
policies left it. alpha is the migration strength (0.5 in the paper; larger moves more into the weights).
s is 1 for a channel the calibration never activated or whose column is all zeros (pruned), is clamped to
[S_MIN, S_MAX], and is rounded to float16 (the packed export stores it as float16, so the vector searched and
evaluated is exactly the vector exported). Zeros of the weight stay zeros: masks and N:M patterns survive.

Runs in `ORDER` after pruning and factorization and before "quantize": the weight grid is fitted to W', the
int8 activation hook (registered by the quantize policy after this one's hook) sees x / s, and GPTQ's Gram
matrix, gathered by hooks registered later still, is that of x / s too. Wanda's pruning score |W_ij| ||x_j||
does not change under smoothing, so pruning first loses nothing.

This implementation does not fold s into the preceding LayerNorm as the paper does: each smoothed Linear
divides its own input by its own s in a forward pre-hook (one elementwise division per token and layer).
That works for every Linear, including those whose input no norm produces (o_proj, down_proj, a BERT output
dense), and lets layers that share an input (q/k/v; gate/up) take different s without a copy of the input.

The policy records s on the module as a plain attribute `module._autocompress_smooth` (SMOOTH_ATTR; float32
[in], float16-exact; not a buffer, so the state_dict keys do not change) for the exporter, and the hook
reads it from there, so a deep copy of the model carries its own s.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies._base import POLICIES, Calibration, Policy, check_weight, linear_layer

SMOOTH_ATTR = "_autocompress_smooth"
S_MIN, S_MAX = 2.0 ** -14, 2.0 ** 14  # within float16's normal range, so s rounds to float16 with full precision


def smoothing_scales(absmax: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """s (float32 [in], float16-exact) for a weight `w` [out, in] whose inputs reach `absmax` [in] (see the
    module docstring)."""
    w_max = w.detach().abs().amax(0).float()
    a = absmax.detach().float().to(w_max.device)
    s = a.pow(alpha) / w_max.clamp_min(1e-12).pow(1.0 - alpha)
    s = torch.where((a > 0) & (w_max > 0) & torch.isfinite(s), s, torch.ones_like(s))
    return s.clamp(S_MIN, S_MAX).to(torch.float16).float()


def smooth_hook(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: divides the input by the module's s (module-level, so it pickles and deep-copies)."""
    if args and torch.is_tensor(args[0]) and args[0].is_floating_point():
        x = args[0]
        s = getattr(module, SMOOTH_ATTR).to(x.device)
        return ((x.float() / s).to(x.dtype), *args[1:])
    return None


def add_smoothing(module: nn.Module, s: torch.Tensor) -> None:
    """Record `s` on `module` and divide its input by it on every forward. The weight is not changed here (the
    policy scales it; a loader finds it scaled already). A module is smoothed at most once (ValueError)."""
    if getattr(module, SMOOTH_ATTR, None) is not None:
        raise ValueError(f"{type(module).__name__} is smoothed already; smoothing twice would scale it twice")
    setattr(module, SMOOTH_ATTR, s.detach().float())
    module.register_forward_pre_hook(smooth_hook)


@POLICIES.register("smooth")
class SmoothPolicy(Policy):
    """Smooths every entry with `smooth` (see the module docstring): one calibration pass gathers the input
    ranges of all of them on the model as it stands, then each weight's columns are multiplied by s and its
    input divided by s. Needs calibration data."""

    name = "smooth"

    def handles(self, entry: LayerPlan) -> bool:
        return entry.smooth is not None

    def needs_calibration(self, entry: LayerPlan) -> bool:
        return True

    def apply(self, model: nn.Module, plan: CompressionPlan, calibration: Calibration | None) -> None:
        entries = self.entries(plan)
        first = next(iter(entries))
        calib = self.require(calibration, first, f"smooth={entries[first].smooth:g} (SmoothQuant)")
        modules = {name: linear_layer(model, name, "smooth") for name in entries}
        absmax = calib.input_absmax(model, modules)
        with torch.no_grad():
            for name, module in modules.items():
                w = check_weight(name, module)
                s = smoothing_scales(absmax[name], w, entries[name].smooth)
                w.copy_((w.float() * s[None, :]).to(w.dtype))
                add_smoothing(module, s)
