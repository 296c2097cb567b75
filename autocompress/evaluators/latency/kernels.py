"""The real kernels this machine has, per weight format, and the compressed model built with them.

What runs for real (`available_formats`):
  cpu   the packed export's kernels (`autocompress.export.kernels`, which says which layer takes which):
        dense: fp32 `nn.Linear`; w8a8: torch's dynamic int8 Linear fed per token (`W8A8Linear`; int8 weights
        per output channel, activations quantized per call); w8: int8 weights per output channel through
        `torch._weight_int8pack_mm`; w4: 4-bit weights in groups of 32/64/128/256 through
        `aten._weight_int4pack_mm_for_cpu` (out_features a multiple of 16); the weight-only kernels compute with
        bfloat16 activations. Each where torch here has it (`export.kernels.has_kernel`).
  cuda  dense: bf16 `nn.Linear`; 2:4: `torch.sparse.to_sparse_semi_structured` weights, when the GPU and
        this torch build support it (probed once on a tiny tensor).
A layer whose format or weight layout has no kernel here (other bit widths, 4-bit with one scale per output
channel, grouped 8-bit, ...) runs as the dense Linear (weights dequantized once at load, the profile's
`fallback: dense`), exactly as the export runs it. Unstructured sparsity runs dense everywhere.

`build_real_model` applies only what changes shapes (structured pruning, low rank) and then swaps in the
real kernel of each layer (`export.kernels.cpu_kernel` on the layer's shape, bits, group size, symmetry and
activation bits), so timing it measures what the packed export would run. The weights' values are not the
plan's (no calibration: magnitude/SVD, round-to-nearest integers): only speed counts.
"""

from __future__ import annotations

import copy
import functools
import warnings

import torch
from torch import nn

from autocompress.evaluators.latency._base import layer_format
from autocompress.modules import LowRankLinear, as_linear, is_linear_like, set_module
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.vocab.export import reattach
from autocompress.vocab.latency import data_free


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
    """The formats with a real fast kernel on `device` ("cpu", "cuda", "cuda:N"); always starts with "dense".
    A weight format's kernel takes only some layouts (`export.kernels.CPU_KERNELS`)."""
    if _is_cuda(device):
        return ["dense"] + (["2:4"] if _cuda_has_2_4(str(device)) else [])
    if str(device) == "cpu":
        from autocompress.export.kernels import CPU_KERNELS, KIND_OF_FORMAT, has_kernel

        return ["dense"] + [f for f in CPU_KERNELS if has_kernel(KIND_OF_FORMAT[f])]
    return ["dense"]


def _dense(linear: nn.Linear, device: str) -> nn.Linear:
    return copy.deepcopy(linear).to(device=device, dtype=dense_dtype(device))


def dynamic_int8_linear(linear: nn.Linear) -> nn.Module:
    """torch's dynamic int8 Linear of `linear` on the CPU: int8 weights per output channel (symmetric),
    activations quantized per call (the engine is `torch.backends.quantized.engine`)."""
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


def _bits_of(fmt: str) -> tuple[int, int | None]:
    """(weight bits, activation bits) of a weight format."""
    return (8, 8) if fmt == "w8a8" else (int(fmt[1:]), None)


def cpu_kernel_of(linear: nn.Linear, fmt: str, group_size: int | None = None, symmetric: bool = True) -> str | None:
    """The export's CPU kernel kind for `linear` in weight format `fmt` (`export.kernels.cpu_kernel`), or None."""
    from autocompress.export.kernels import cpu_kernel

    if not fmt.startswith("w"):
        return None
    bits, act_bits = _bits_of(fmt)
    return cpu_kernel(bits, group_size, symmetric, act_bits, (linear.out_features, linear.in_features))


def export_kernel_module(linear: nn.Linear, kind: str, bits: int, group_size: int | None,
                         symmetric: bool) -> nn.Module:
    """The packed export's `kind` kernel module for `linear`, its weights rounded to the nearest point of the
    `bits` grid (groups of `group_size`, or per output channel)."""
    from autocompress.export.kernels import kernel_module
    from autocompress.policies.quantize import QuantGrid, quant_params, quantize_int

    w = linear.weight.detach().float().cpu()
    scale, zero = quant_params(w, bits, group_size, symmetric)
    q = quantize_int(w, scale, zero, bits, group_size, symmetric)
    bias = None if linear.bias is None else linear.bias.detach().float().cpu()
    return kernel_module(q, QuantGrid(bits, group_size, symmetric, scale, zero), bias, kind)


def real_linear(linear: nn.Linear, fmt: str, device: str, group_size: int | None = None,
                symmetric: bool = True) -> nn.Module:
    """A module computing `linear`'s function (up to the format's rounding) with the real kernel of `fmt` on
    `device` (for weight formats: integers in groups of `group_size` inputs, None = per output channel), as the
    packed export runs it; or the dense Linear in `dense_dtype(device)` where there is none (the fallback).
    Never modifies `linear`."""
    if fmt not in available_formats(device) or fmt == "dense":
        return _dense(linear, device)
    if fmt == "2:4":
        try:
            return _sparse_2_4_linear(linear, device)
        except Exception:  # noqa: BLE001  (a shape the sparse kernel does not take: runs dense)
            return _dense(linear, device)
    kind = cpu_kernel_of(linear, fmt, group_size, symmetric) if str(device) == "cpu" else None
    if kind is None:
        return _dense(linear, device)
    return export_kernel_module(linear, kind, _bits_of(fmt)[0], group_size, symmetric)


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


def _as_exported(module: nn.Module, entry: LayerPlan, device: str) -> nn.Module:
    """One Linear-like `module` as the export runs it under `entry`: the real kernel module where the layer's
    format and weight layout have one on `device`, else `module` itself (dense); with the int8 activation hook
    in front when the entry has act_bits and the kernel is not w8a8 (which quantizes its input itself)."""
    from autocompress.policies.quantize import add_act_quant

    fmt, _ = layer_format(entry)
    out, kind = module, None
    if fmt == "2:4" and fmt in available_formats(device):
        out = real_linear(as_linear(module), fmt, device)
    elif fmt.startswith("w") and fmt in available_formats(device) and str(device) == "cpu":
        linear = as_linear(module)
        kind = cpu_kernel_of(linear, fmt, entry.group_size, entry.symmetric)
        if kind is not None:
            out = export_kernel_module(linear, kind, _bits_of(fmt)[0], entry.group_size, entry.symmetric)
    if entry.act_bits is not None and kind != "w8a8":
        add_act_quant(out, entry.act_bits)
    return out


def build_real_model(base_model: nn.Module, plan: CompressionPlan, device: str) -> nn.Module:
    """A deep copy of `base_model` (left untouched) with `plan`'s shapes applied (`shape_plan`), on `device`
    in `dense_dtype(device)`, every planned Linear-like layer as the export runs it (`_as_exported`: the real
    kernel where its format and weight layout have one on `device`, both factors of a LowRankLinear each on its
    own shape; a GPT-2 Conv1D with a kernel becomes that kernel's module), in eval mode. A pruned vocabulary
    keeps as many rows, the first ids (`autocompress.vocab.latency.data_free`)."""
    from autocompress.policies import apply_plan

    model = copy.deepcopy(base_model)
    if plan.drop_blocks:  # the blocks go first (autocompress.depth); the rest of the plan names the blocks left
        from autocompress.depth.apply import remove_blocks
        from autocompress.depth.reduce import reduced_plan
        from autocompress.models import inspect_model

        info = inspect_model(model)
        remove_blocks(model, plan.drop_blocks, info)
        plan = reduced_plan(plan, info)
    shapes = shape_plan(plan)
    if plan.vocab is not None:  # the kept rows, data-free (the first ids): the same shapes, the same time
        table = model.get_input_embeddings()
        shapes = CompressionPlan(shapes.layers, vocab=data_free(plan.vocab, table.num_embeddings))
    if not shapes.is_empty:
        apply_plan(model, shapes)
    model.to(device=device, dtype=dense_dtype(device))
    for name, entry in plan.layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, LowRankLinear):
            module.down = _as_exported(module.down, entry, device)
            module.up = _as_exported(module.up, entry, device)
        elif is_linear_like(module):
            swapped = _as_exported(module, entry, device)
            if swapped is not module:
                set_module(model, name, swapped)
    reattach(model, model.state_dict())  # a pruned head a kernel replaced maps its logits back again
    return model.eval()
