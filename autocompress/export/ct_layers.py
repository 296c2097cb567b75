"""What the compressed-tensors format can hold of a plan: one decision per Linear layer and embedding table.

`decide(model, plan, info, strict)` -> `Decisions`:
  schemes   layer -> `Scheme` (bits, group_size or None for one scale per output channel, symmetric,
            act_bits) for every layer written as a compressed-tensors scheme: quantized weights on the
            plan's grid (pack-quantized, or int-quantized with int8 activations), or dense weights with
            dynamic int8 activations (bits None);
  dense     the Linear layers written as plain dense weights (config's `ignore`);
  warnings  one line per layer written dense or without its sparse saving, with the reason; every such
            layer holds exactly the searched values (the weights the search evaluated, dequantized; a
            low-rank pair as the product of its factors, equal to fp rounding), only the compact storage
            is lost;
  notes     lines about engines (layers vLLM fuses with different schemes), not about the values.
Asymmetric weight-only layers are written dense: the package packs their zero points (pack-quantized, what
vLLM reads), but transformers (5.x with compressed-tensors 0.20) builds the zero-point parameter unpacked and
refuses the checkpoint (llm-compressor issue 1618). With int8 activations they are int-quantized, whose zero
points are not packed, and load.
Refused (`UserError`, one line, before anything is written), because no dense form is the searched model:
  removed attention heads or FFN neurons (the architecture's config.json has one head and neuron count for
  every block), smoothed (SmoothQuant) layers (the format cannot divide a layer's input by a vector), and
  int8 activations on a layer the format keeps dense (a low-rank pair, a GPT-2 Conv1D).
A plan's quantized KV cache is not written (a warning: the format's kv_cache_scheme holds static scales, see
kvcache/export.py). A pruned vocabulary is refused (vocab/export.py). With `strict`, every warning is a refusal too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

from autocompress.errors import UserError
from autocompress.kvcache.export import compressed_tensors_warning
from autocompress.vocab.export import check_format
from autocompress.models import ModelInfo
from autocompress.modules import LowRankLinear
from autocompress.plan import CompressionPlan


class Scheme(NamedTuple):
    bits: int | None
    group_size: int | None  # None: one scale per output channel
    symmetric: bool
    act_bits: int | None


@dataclass
class Decisions:
    schemes: dict[str, Scheme] = field(default_factory=dict)
    dense: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def tied_names(model: nn.Module) -> set[str]:
    """Module names whose weight is shared with another module (a head tied to its embedding table)."""
    seen: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name.endswith(".weight"):
            seen.setdefault(id(p), []).append(name.removesuffix(".weight"))
    return {n for names in seen.values() if len(names) > 1 for n in names}


def _refusals(plan: CompressionPlan, info: ModelInfo) -> list[str]:
    out = []
    for name, entry in plan.layers.items():
        if name in info.structures and entry.pattern == "structured" and entry.prunes:
            kind = info.structures[name].kind
            out.append(f"{name}: its removed {kind} cannot be written in compressed-tensors (a {info.model_type} "
                       f"config.json has one {kind[:-1]} count for every block); export it with --format "
                       "autocompress, or search without structured pruning")
        elif entry.bits is not None and entry.quant_method == "kmeans":
            out.append(f"{name}: a clustered (quant_method kmeans) layer cannot be written in compressed-tensors "
                       "(it holds integer grids, not codebooks); export it with --format autocompress, or use "
                       "quant_method rtn or gptq")
        elif entry.smooth is not None:
            out.append(f"{name}: a smoothed (SmoothQuant) layer cannot be written in compressed-tensors (it cannot "
                       "divide a layer's input by a vector); export it with --format autocompress, or search "
                       "without smooth")
    return out


def head_name(model: nn.Module) -> str | None:
    """The module name of the model's output head (`get_output_embeddings`), or None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    return next((n for n, m in model.named_modules() if head is not None and m is head), None)


def _kept_dense(module: nn.Module, head: bool, tied: bool) -> str | None:
    """Why a quantized layer is written dense whatever its plan, or None."""
    if isinstance(module, LowRankLinear):
        return f"low-rank factors of rank {module.rank}, written as their dense product (the format has no factor pair)"
    if type(module).__name__ == "Conv1D":
        return "a GPT-2 Conv1D, written dense (compressed-tensors quantizes nn.Linear weights only)"
    if tied:
        return "tied to its embedding table, written dense with its planned values (a packed weight cannot be tied)"
    if head:
        return "the output head, written dense with its planned values (vLLM loads a compressed-tensors head dense)"
    return None


def _layer(name: str, module: nn.Module, entry, in_features: int, head: bool,
           tied: bool) -> tuple[Scheme | None, str | None]:
    """(scheme or None for dense, the warning or None) of one Linear layer; UserError when it cannot be written."""
    why = _kept_dense(module, head, tied)
    if why is not None:
        if entry.act_bits is not None:
            raise UserError(f"{name}: int8 activations on a layer compressed-tensors keeps dense ({why.split(',')[0]}) "
                            "cannot be written; export it with --format autocompress")
        return None, f"{name}: {why}"
    if entry.bits is None:
        sparse = f"{name}: sparse ({entry.pattern}), written dense with its zeros (compressed-tensors stores no " \
                 "sparse layout)"
        if entry.act_bits is not None:
            return Scheme(None, None, True, entry.act_bits), sparse if entry.prunes else None
        return None, sparse if entry.prunes else None
    gs = entry.group_size if entry.group_size is not None and entry.group_size < in_features else None
    if gs is not None and in_features % gs:
        if entry.act_bits is not None:
            raise UserError(f"{name}: groups of {gs} do not divide its {in_features} inputs, and compressed-tensors "
                            "needs them to; export it with --format autocompress")
        return None, (f"{name}: groups of {gs} do not divide its {in_features} inputs (compressed-tensors needs "
                      "them to), written dense with its quantized values")
    if not entry.symmetric and entry.act_bits is None:
        return None, (f"{name}: asymmetric weights, written dense with their quantized values (transformers cannot "
                      "load compressed-tensors' packed zero points)")
    warning = (f"{name}: sparse ({entry.pattern}) and quantized, written quantized with its zeros (compressed-tensors "
               "stores no sparse layout)") if entry.prunes else None
    return Scheme(entry.bits, gs, entry.symmetric, entry.act_bits), warning


def decide(model: nn.Module, plan: CompressionPlan, info: ModelInfo, strict: bool = False) -> Decisions:
    """The decisions of the module docstring for `model` (what `apply_plan` returned); raises `UserError`
    (the first refusal; under `strict` the first warning) before anything is written."""
    check_format("compressed-tensors", plan)  # no id map in front of the table (vocab/export.py)
    refused = _refusals(plan, info)
    if refused:
        raise UserError(refused[0])
    tied, head = tied_names(model), head_name(model)
    out = Decisions()
    for name, layer in info.layers.items():
        entry = plan.layers.get(name)
        if entry is None or entry.is_noop:
            out.dense.append(name)
            continue
        scheme, warning = _layer(name, model.get_submodule(name), entry, layer.in_features, name == head,
                                 name in tied)
        if scheme is None:
            out.dense.append(name)
        else:
            out.schemes[name] = scheme
        if warning:
            out.warnings.append(warning)
    for table in info.untied_tables():
        entry = plan.layers.get(table)
        if entry is not None and entry.bits is not None:
            out.warnings.append(f"{table}: a quantized embedding table, written dense with its quantized values "
                                "(engines load compressed-tensors tables dense)")
    if plan.kv_cache is not None:  # a run-time cache this format cannot describe (kvcache/export.py)
        out.warnings.append(compressed_tensors_warning(plan.kv_cache))
    if strict and out.warnings:
        raise UserError(f"--strict: {out.warnings[0]}; export with --format autocompress, or without --strict")
    for group, members in info.groups.items():
        kinds = {out.schemes.get(m) for m in members}
        if len(kinds) > 1:
            out.notes.append(f"{', '.join(members)} have different schemes: vLLM fuses them into one layer and "
                             "refuses that (search with space.share: group for vLLM)")
    return out
