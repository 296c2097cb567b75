"""The real kernels this machine has, per weight format, and the compressed model built with them.

What runs for real (`available_formats`):
  cpu   dense: fp32 `nn.Linear`; w8a8: `torch.ao.nn.quantized.dynamic.Linear` (int8 weights, per output
        channel; activations quantized per call; the engine is `torch.backends.quantized.engine`).
  cuda  dense: bf16 `nn.Linear`; 2:4: `torch.sparse.to_sparse_semi_structured` weights, when the GPU and
        this torch build support it (probed once on a tiny tensor).
Weight-only integers (w2..w8) have no fast built-in kernel in eager torch on either device: they run as the
dense Linear (weights dequantized once at load, the profile's `fallback: dense`), as does every format a
device lacks. Unstructured sparsity runs dense everywhere.

`build_real_model` applies only what changes shapes (structured pruning, low rank) and then swaps in the
real kernel of each layer's format, so timing it measures what the plan would cost when deployed with
stock torch. The weights' values are not the plan's (no calibration, magnitude/SVD only): only speed counts.
"""

from __future__ import annotations

import copy
import functools
import warnings

import torch
from torch import nn

from autocompress.hardware.profile import format_of
from autocompress.modules import LowRankLinear, as_linear, is_linear_like, set_module
from autocompress.plan import CompressionPlan, LayerPlan


def _is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def dense_dtype(device: str) -> torch.dtype:
    """The deployment dtype of dense layers: float32 on cpu, bfloat16 on cuda."""
    return torch.bfloat16 if _is_cuda(device) else torch.float32


def prune_2_4(w: torch.Tensor) -> torch.Tensor:
    """`w` [out, in] with the 2 smallest-magnitude of every 4 consecutive inputs set to zero."""
    groups = w.reshape(-1, 4)
    drop = groups.abs().topk(2, dim=1, largest=False).indices
    return groups.scatter(1, drop, 0).reshape(w.shape)


def _sparse_2_4_linear(linear: nn.Linear, device: str) -> nn.Linear:
    """A Linear whose weight is 2:4-pruned and stored semi-structured; raises if the kernel refuses it."""
    from torch.sparse import to_sparse_semi_structured

    dtype = dense_dtype(device)
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=device, dtype=dtype)
    with torch.no_grad():
        w = prune_2_4(linear.weight.detach().to(device=device, dtype=dtype))
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach())
    out.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
    with torch.inference_mode():  # the kernel checks shapes only when it runs
        out(torch.zeros(32, linear.in_features, device=device, dtype=dtype))
    return out


@functools.cache
def _cuda_has_2_4(device: str) -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        _sparse_2_4_linear(nn.Linear(128, 128), device)
        return True
    except Exception:  # noqa: BLE001  (no sparse tensor cores, or a torch build without the kernels)
        return False


def available_formats(device: str) -> list[str]:
    """The formats with a real fast kernel on `device` ("cpu", "cuda", "cuda:N"); always starts with "dense"."""
    if _is_cuda(device):
        return ["dense"] + (["2:4"] if _cuda_has_2_4(str(device)) else [])
    if str(device) == "cpu":
        return ["dense", "w8a8"]
    return ["dense"]


def _dense(linear: nn.Linear, device: str) -> nn.Linear:
    return copy.deepcopy(linear).to(device=device, dtype=dense_dtype(device))


def real_linear(linear: nn.Linear, fmt: str, device: str) -> nn.Module:
    """A module computing `linear`'s function (up to the format's rounding) with the real kernel of `fmt` on
    `device`, or the dense Linear in `dense_dtype(device)` where there is none (the fallback). Never
    modifies `linear`."""
    if fmt not in available_formats(device) or fmt == "dense":
        return _dense(linear, device)
    if fmt == "w8a8":  # cpu: int8 weights per output channel, activations quantized dynamically per call
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        src = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            src.weight.copy_(linear.weight.detach().float().cpu())
            if linear.bias is not None:
                src.bias.copy_(linear.bias.detach().float().cpu())
        src.qconfig = per_channel_dynamic_qconfig
        with warnings.catch_warnings():  # torch >= 2.10 flags quantized tensor creation as deprecated
            warnings.filterwarnings("ignore", message=".*quantize_per_.*deprecated", category=UserWarning)
            return DynamicQuantLinear.from_float(src)
    if fmt == "2:4":
        try:
            return _sparse_2_4_linear(linear, device)
        except Exception:  # noqa: BLE001  (a shape the sparse kernel does not take: runs dense)
            return _dense(linear, device)
    return _dense(linear, device)


def shape_plan(plan: CompressionPlan) -> CompressionPlan:
    """Only the shape-changing part of `plan`, made data-free: structured entries (magnitude scores) and
    ranks (plain SVD). Bits, activations and unstructured/N:M sparsity are dropped."""
    layers = {}
    for name, e in plan.layers.items():
        if e.pattern == "structured":
            layers[name] = LayerPlan(sparsity=e.sparsity, pattern="structured", prune_method="magnitude")
        elif e.rank is not None:
            layers[name] = LayerPlan(rank=e.rank, rank_method="svd")
    return CompressionPlan(layers)


def layer_format(entry: LayerPlan) -> str:
    """The kernel format of one Linear's plan entry (as `plan_ops` prices it)."""
    return format_of(entry.bits, entry.act_bits, entry.pattern if entry.prunes else None)


def build_real_model(base_model: nn.Module, plan: CompressionPlan, device: str) -> nn.Module:
    """A deep copy of `base_model` (left untouched) with `plan`'s shapes applied (`shape_plan`), on `device`
    in `dense_dtype(device)`, every planned layer whose format has a real kernel on `device` replaced by
    `real_linear` (both factors of a LowRankLinear; a GPT-2 Conv1D becomes an nn.Linear), in eval mode."""
    from autocompress.policies import apply_plan

    model = copy.deepcopy(base_model)
    shapes = shape_plan(plan)
    if not shapes.is_empty:
        apply_plan(model, shapes)
    model.to(device=device, dtype=dense_dtype(device))
    fast = set(available_formats(device)) - {"dense"}
    for name, entry in plan.layers.items():
        fmt = layer_format(entry)
        if fmt not in fast:
            continue
        module = model.get_submodule(name)
        if isinstance(module, LowRankLinear):
            module.down = real_linear(as_linear(module.down), fmt, device)
            module.up = real_linear(as_linear(module.up), fmt, device)
        elif is_linear_like(module):
            set_module(model, name, real_linear(as_linear(module), fmt, device))
    return model.eval()
