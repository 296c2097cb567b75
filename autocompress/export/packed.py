"""A compressed model <-> the flat dict of packed tensors and per-layer metadata that model.safetensors holds.

Tensor names are state_dict keys. For every Linear-like layer of `ModelInfo.layers` (both factors of a
`LowRankLinear`: `<layer>.down.weight`, `<layer>.up.weight`) and every embedding table not tied to one
(`<table>.weight`, [num_embeddings, dim] taken as [out, in]) the weight is either stored as the parameter
itself (not quantized and dense: native layout, model dtype) or packed by `matrix.pack_matrix` as
`<key>.qweight`, `<key>.scales`, ... in the [out, in] layout (a GPT-2 Conv1D's [in, out] weight is transposed
back on unpacking). Biases and every other parameter are stored as they are; a parameter tied to another
(GPT-2's lm_head and wte) is stored once, under the Linear layer's key, and `tied` maps the alias to it.

A smoothed layer (`LayerPlan.smooth`, policies/smooth.py) also stores its smoothing vector s as
`<layer>.smooth_scales` (fp16 [in]); its weight is stored already multiplied by s, and a loader divides the
layer's input by s (`smoothing_vectors`). Exports without smoothed layers hold no such tensor.

`layers[name]` (JSON-able) = {"layout": dense | bitmask | N:M | lowrank, "bytes": stored bytes of the layer
(weights + bias + smoothing vector), "predicted_bytes" and "predicted_layout" from `plan_size`, "rank" (low
rank only), "act_bits", "smooth" (smoothed layers only: the plan's alpha), "matrices": {weight key: matrix
metadata + "stored": "native" | "packed", "transposed": bool}}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress.evaluators.size import plan_size
from autocompress.export.matrix import pack_matrix, unpack_matrix
from autocompress.models import ModelInfo
from autocompress.modules import LowRankLinear, is_conv1d, weight_matrix
from autocompress.plan import CompressionPlan
from autocompress.policies.quantize import GRID_ATTR
from autocompress.policies.smooth import SMOOTH_ATTR

SUFFIXES = ("qweight", "scales", "zeros", "codebook", "values", "mask", "nm_index")
SMOOTH_SUFFIX = "smooth_scales"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class PackedModel:
    """Everything model.safetensors holds: `tensors` plus the metadata needed to unpack them."""

    tensors: dict[str, torch.Tensor]
    layers: dict[str, dict[str, Any]]
    tied: dict[str, str] = field(default_factory=dict)
    dtype: str = "float32"

    @property
    def tensor_bytes(self) -> int:
        return sum(_nbytes(t) for t in self.tensors.values())


def weight_parts(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """(state_dict prefix, module) of the Linear-like modules holding layer `name`'s weights."""
    module = model.get_submodule(name)
    if isinstance(module, LowRankLinear):
        return [(f"{name}.down", module.down), (f"{name}.up", module.up)]
    return [(name, module)]


def tied_aliases(model: nn.Module, preferred: set[str]) -> dict[str, str]:
    """alias key -> stored key for parameters shared under several names; the stored one is in `preferred`
    (the Linear weights) where possible, else the first name."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    out = {}
    for names in groups.values():
        if len(names) > 1:
            keep = next((n for n in names if n in preferred), names[0])
            out.update({n: keep for n in names if n != keep})
    return out


def pack_model(model: nn.Module, plan: CompressionPlan, info: ModelInfo) -> PackedModel:
    """Pack `model` (what `apply_plan(model, plan, info=info)` returned; `info` is the original model's
    inventory) into the format of the module docstring. Raises ValueError where the model does not realize
    the plan (a quantized weight off its recorded grid, more nonzeros than a sparse layout keeps)."""
    dtype = next(model.parameters()).dtype
    db = info.dtype_bytes
    if torch.empty(0, dtype=dtype).element_size() != db:
        raise ValueError(f"the model is {dtype} but its inventory says {db} bytes per value; export the model "
                         "in the dtype it was planned in")
    sizes = plan_size(plan, info)
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    handled: set[str] = set()
    for name in [*info.layers, *info.untied_tables()]:
        entry = plan.layers.get(name)
        parts = weight_parts(model, name)
        low_rank = len(parts) == 2
        record: dict[str, Any] = {"layout": "lowrank" if low_rank else None,
                                  "act_bits": getattr(entry, "act_bits", None),
                                  "predicted_bytes": sizes.per_layer[name], "predicted_layout": sizes.formats[name],
                                  "matrices": {}}
        total = 0
        for prefix, module in parts:
            key = f"{prefix}.weight"
            handled.add(key)
            packed, meta = pack_matrix(weight_matrix(module), entry, getattr(module, GRID_ATTR, None), db,
                                       sparse=not low_rank, where=f"layer {name!r} ({key})")
            meta["transposed"] = is_conv1d(module)
            if packed:
                meta["stored"] = "packed"
                tensors.update({f"{key}.{suffix}": t for suffix, t in packed.items()})
                total += sum(_nbytes(t) for t in packed.values())
            else:
                meta["stored"] = "native"
                tensors[key] = state[key].contiguous()
                total += _nbytes(tensors[key])
            record["matrices"][key] = meta
            record["layout"] = record["layout"] or meta["layout"]
            if getattr(module, "bias", None) is not None:
                total += _nbytes(module.bias)
        if low_rank:
            record["rank"] = parts[0][1].out_features
        if entry is not None and entry.smooth is not None:
            vector = _smoothing_vector(parts[0][1], name)
            tensors[f"{name}.{SMOOTH_SUFFIX}"] = vector
            total += _nbytes(vector)
            record["smooth"] = entry.smooth
        record["bytes"] = total
        layers[name] = record
    tied = tied_aliases(model, handled)
    for key, t in state.items():
        if key not in handled and key not in tied:
            tensors[key] = t.detach().contiguous()
    return PackedModel(tensors, layers, tied, str(dtype).removeprefix("torch."))


def _smoothing_vector(module: nn.Module, name: str) -> torch.Tensor:
    """The fp16 smoothing vector the smooth policy recorded on `module`; ValueError if there is none or it does
    not fit the layer."""
    s = getattr(module, SMOOTH_ATTR, None)
    if s is None:
        raise ValueError(f"layer {name!r}: the plan smooths it but it has no recorded smoothing vector "
                         f"({SMOOTH_ATTR}); export the model that apply_plan returned")
    s = s.detach().cpu()
    if s.shape != (weight_matrix(module).shape[1],) or not torch.equal(s.to(torch.float16).float(), s.float()):
        raise ValueError(f"layer {name!r}: its smoothing vector does not fit the layer or is not float16-exact")
    return s.to(torch.float16).contiguous()


def smoothing_vectors(packed: PackedModel) -> dict[str, torch.Tensor]:
    """Layer name -> its smoothing vector s (float32 [in]) for every smoothed layer of `packed`."""
    return {name: packed.tensors[f"{name}.{SMOOTH_SUFFIX}"].float()
            for name, record in packed.layers.items() if record.get("smooth") is not None}


def unpack_state_dict(packed: PackedModel) -> dict[str, torch.Tensor]:
    """The full state_dict (every key, tied aliases included, native layouts) that `packed` describes
    (smoothing vectors are not state: see `smoothing_vectors`)."""
    dtype = getattr(torch, packed.dtype)
    used = {f"{name}.{SMOOTH_SUFFIX}" for name in smoothing_vectors(packed)}
    state: dict[str, torch.Tensor] = {}
    for record in packed.layers.values():
        for key, meta in record["matrices"].items():
            if meta["stored"] != "packed":
                continue
            parts = {s: packed.tensors[f"{key}.{s}"] for s in SUFFIXES if f"{key}.{s}" in packed.tensors}
            used.update(f"{key}.{s}" for s in parts)
            w = unpack_matrix(parts, meta, dtype)
            state[key] = w.t().contiguous() if meta["transposed"] else w
    state.update({k: t for k, t in packed.tensors.items() if k not in used})
    for alias, key in packed.tied.items():
        state[alias] = state[key]
    return state
