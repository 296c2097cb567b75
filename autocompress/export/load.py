"""`load_compressed`: rebuild a working model from a packed export directory (see `save.py`).

Steps: check the directory (export.json, config.json, plan.json, model.safetensors) and the format version;
build the architecture from config.json (its model_type unmarked, see save.py) with the task's Auto class
`from_config` (never trust_remote_code);
apply the plan's shape changes to that skeleton (structured entries keep the first n units, as the stored
tensors are ordered; low-rank layers become `LowRankLinear` of the stored rank); unpack every tensor
(`safetensors.torch.load_file`, no pickle) and `load_state_dict(strict=True)`; re-tie tied weights; with
`kernels=True`, swap in the real CPU kernels of `kernels.py` and keep quantized embedding tables packed
(`embedding.PackedEmbedding`; a table tied to a Linear that runs a kernel too, from the same integers); re-add,
in this order, the smoothing hooks of smoothed layers (the input divided by the stored s) and the int8
activation hooks of act_bits=8 layers, except on a w8a8 kernel, which does both itself; eval mode.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.export import kernels as K
from autocompress.export.embedding import PackedEmbedding
from autocompress.export.entropy import decode
from autocompress.export.matrix import unpack_int
from autocompress.export.packed import SUFFIXES, PackedModel, smoothing_vectors, unpack_state_dict, weight_parts
from autocompress.export.save import FORMAT_NAME, FORMAT_VERSION, unmark_config
from autocompress.kvcache.runtime import attach_kv_cache
from autocompress.models import inspect_model
from autocompress.loading import _auto_class
from autocompress.modules import in_out_features, set_module
from autocompress.plan import CompressionPlan
from autocompress.policies.quantize import QuantGrid, add_act_quant
from autocompress.policies.lowrank import low_rank_module
from autocompress.policies.smooth import add_smoothing
from autocompress.policies.structured import prune_units
from autocompress.vocab.export import reattach, restore_skeleton

REQUIRED = ("export.json", "config.json", "plan.json", "model.safetensors")
DTYPES = ("float32", "float16", "bfloat16", "float64")  # model dtypes an export may name


@dataclass
class CompressedModel:
    """A loaded export: the model (eval mode), its tokenizer (None if none was saved), its plan, the
    contents of export.json, and `kernels`: weight module name -> kernel ("w8a8", "int8", "int4", or
    "table<bits>" for a packed embedding table) for every layer that runs packed (empty with kernels=False)."""

    model: nn.Module
    tokenizer: Any
    plan: CompressionPlan
    info: dict[str, Any]
    kernels: dict[str, str] = field(default_factory=dict)


def read_export(path: str) -> dict[str, Any]:
    """export.json of the export directory `path`; `UserError` if `path` is not a complete export or was
    written by a newer format version."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise UserError(f"export {path!r} is not a directory; give the directory save_compressed wrote")
    for name in REQUIRED:
        if not os.path.isfile(os.path.join(path, name)):
            raise UserError(f"export {path!r} has no {name}: it is not a (complete) autocompress export; "
                            "export the model again")
    try:
        with open(os.path.join(path, "export.json"), encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"export {path!r}: export.json cannot be read ({exc}); export the model again") from None
    version = info.get("format_version") if isinstance(info, dict) else None
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME or type(version) is not int:
        raise UserError(f"export {path!r}: export.json is not an {FORMAT_NAME} description")
    if version > FORMAT_VERSION:
        raise UserError(f"export {path!r}: format version {version} is newer than this autocompress reads "
                        f"(<= {FORMAT_VERSION}); upgrade autocompress")
    return info


def read_packed(path: str) -> PackedModel:
    """The tensors and metadata of model.safetensors in `path`, entropy-coded streams decoded (`entropy.py`);
    `UserError` if it is corrupt or truncated, or a coded stream does not decode (naming the tensor)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    file = os.path.join(path, "model.safetensors")
    try:
        with safe_open(file, framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(file)
        layers, tied = json.loads(header["layers"]), json.loads(header["tied"])
        dtype = header["dtype"]
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        coded = json.loads(header.get("coded", "{}"))
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise UserError(f"export {path!r}: model.safetensors is corrupt or truncated ({str(exc)[:120]}); "
                        "export the model again") from None
    if coded:
        tensors = decode(tensors, coded, path)
    return PackedModel(tensors, layers, tied, dtype)


def read_config(path: str) -> Any:
    """The transformers config of the export `path` (config.json, its model_type unmarked: see save.py);
    `UserError` for a model type this transformers does not know."""
    from transformers import CONFIG_MAPPING

    with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
        data = unmark_config(json.load(fh))
    model_type = data.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"export {path!r}: config.json names model type {model_type!r}, which this transformers "
                        "does not know; upgrade transformers or export the model again")
    return CONFIG_MAPPING[model_type].from_dict(data)


def _skeleton(path: str, info: dict[str, Any], plan: CompressionPlan, packed: PackedModel) -> nn.Module:
    """The architecture of config.json with the plan's shape changes, randomly initialized."""
    import transformers

    transformers.logging.set_verbosity_error()
    config = read_config(path)
    model = _auto_class(info["task"]).from_config(config, trust_remote_code=False)
    if type(model).__name__ != info["model_class"]:
        raise UserError(f"export {path!r}: config.json builds a {type(model).__name__}, export.json says "
                        f"{info['model_class']}; the export is inconsistent")
    model.to(getattr(torch, packed.dtype))
    structures = inspect_model(model, info["task"]).structures
    for name, entry in plan.layers.items():
        if entry.pattern == "structured" and name in structures:
            s = structures[name]
            n_remove = min(round(entry.sparsity * s.units), s.units - 1)
            if n_remove > 0:
                prune_units(model, s, torch.arange(s.units - n_remove))
    for name, record in packed.layers.items():
        if "rank" in record:
            module = model.get_submodule(name)
            n_in, n_out = in_out_features(module)
            r = record["rank"]
            set_module(model, name, low_rank_module(module, torch.zeros(r, n_in), torch.zeros(n_out, r)))
    restore_skeleton(model, packed.tensors)  # a pruned vocabulary: the stored rows, behind the stored id map
    return model


def _retie(model: nn.Module, tied: dict[str, str]) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    for alias, key in tied.items():
        if params.get(alias) is not params.get(key) and key in params:
            owner, _, attr = alias.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, params[key])


def _apply_kernels(model: nn.Module, packed: PackedModel) -> dict[str, str]:
    """Swap every packed weight module whose format has a real CPU kernel; {module name: kernel}. A w8a8
    kernel takes its layer's smoothing vector."""
    used = {}
    smooth = smoothing_vectors(packed)
    for name, record in packed.layers.items():
        for prefix, module in weight_parts(model, name):
            meta = record["matrices"][f"{prefix}.weight"]
            if meta["bits"] is None or meta.get("quant_method") == "kmeans":  # no kernel: dequantized at load
                continue
            parts = {s: packed.tensors[f"{prefix}.weight.{s}"] for s in SUFFIXES
                     if f"{prefix}.weight.{s}" in packed.tensors}
            q, grid = unpack_int(parts, meta)
            if isinstance(module, nn.Embedding):  # every quantized table stays packed, whatever its bits
                set_module(model, prefix, PackedEmbedding(q, grid, module.weight.dtype))
                used[prefix] = f"table{grid.bits}"
                continue
            kind = K.kernel_kind(grid, tuple(q.shape), record["act_bits"])
            if kind is not None:
                s = smooth.get(name) if kind == "w8a8" else None
                set_module(model, prefix, K.kernel_module(q, grid, module.bias, kind, smooth=s))
                used[prefix] = kind
                used.update(_pack_tied_tables(model, packed, prefix, q, grid))
    return used


def _pack_tied_tables(model: nn.Module, packed: PackedModel, prefix: str, q: torch.Tensor,
                      grid: QuantGrid) -> dict[str, str]:
    """The embedding tables tied to the Linear `prefix`, which now runs a kernel, made `PackedEmbedding`s of the
    same integers (a tied table holds the Linear's [out, in] weight as [rows, dim]): the float weight is held by
    nothing any more, and a lookup gives exactly the rows of the dequantized head."""
    used = {}
    for alias, key in packed.tied.items():
        owner = alias.removesuffix(".weight")
        if key != f"{prefix}.weight" or owner == alias:
            continue
        table = model.get_submodule(owner)
        if isinstance(table, nn.Embedding) and tuple(table.weight.shape) == tuple(q.shape):
            set_module(model, owner, PackedEmbedding(q, grid, table.weight.dtype))
            used[owner] = f"table{grid.bits}"
    return used


def _add_act_hooks(model: nn.Module, packed: PackedModel, kernels: dict[str, str], device: str = "cpu") -> None:
    """Smoothing hooks (s on `device`, where the model will run), then int8 activation hooks (so the int8 grid
    sees x / s), where no w8a8 kernel does both itself."""
    smooth = smoothing_vectors(packed)
    for name, record in packed.layers.items():
        if record["act_bits"] is None and name not in smooth:
            continue
        for prefix, module in weight_parts(model, name):
            if kernels.get(prefix) == "w8a8":  # the dynamic int8 kernel smooths and quantizes its input itself
                continue
            if name in smooth:
                add_smoothing(module, smooth[name].to(device))
            if record["act_bits"] is not None:
                add_act_quant(module, record["act_bits"])


def load_compressed(path: str, kernels: bool = False, device: str = "cpu") -> CompressedModel:
    """Load the export directory `path` (see the module docstring) onto `device`, in eval mode. With
    `kernels=True` (CPU only) layers whose format has a real kernel run it (`CompressedModel.kernels`).
    Raises `UserError` for a directory that is not a complete export, a corrupt or truncated
    model.safetensors, a newer format version, or tensors that do not fit config.json. A plan with a `kv_cache`
    entry leaves the model carrying it (`autocompress.kvcache.runtime`): `model.generate(**cache_kwargs(model))`
    and the evaluators write the cache on its grid, as the search scored it."""
    path = os.fspath(path)
    info = read_export(path)
    plan = CompressionPlan.load(os.path.join(path, "plan.json"))
    packed = read_packed(path)
    try:
        model = _skeleton(path, info, plan, packed)
        state = unpack_state_dict(packed)
        model.load_state_dict(state, strict=True)
    except UserError:
        raise
    except (KeyError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"export {path!r}: model.safetensors does not fit config.json and plan.json ({first}); "
                        "export the model again") from None
    _retie(model, packed.tied)
    used = _apply_kernels(model, packed) if kernels and str(device) == "cpu" else {}
    reattach(model, packed.tensors)  # the id map on a table or head a kernel replaced
    _add_act_hooks(model, packed, used, device)
    model.to(device)
    attach_kv_cache(model, plan.kv_cache)  # generation and the evaluators run it with the plan's quantized cache
    tokenizer = None
    if os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return CompressedModel(model.eval(), tokenizer, plan, info, used)
