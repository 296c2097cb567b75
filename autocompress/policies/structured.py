"""Structured pruning: physically remove whole attention heads or FFN neurons.

A plan entry keyed by a structure name (see `ModelInfo.structures`, e.g. `encoder.layer.0.attention.self`
or `model.layers.0.mlp`) with `pattern="structured"` and sparsity s removes `round(s * units)` units,
always keeping at least one. The producers lose the units' output rows (and bias entries), the consumer
loses the matching input columns (its bias is kept), and the attention module's head bookkeeping is updated
so that its forward still runs. Each block may end up with its own head count; `model.config` is untouched.

Unit scores (lowest removed):
  magnitude: sum over producers of ||rows of the unit||_2 + ||consumer columns of the unit||_2;
  wanda:     sum over the unit's consumer input columns j of ||W_consumer[:, j]||_2 * rms(x_j),
             with x the consumer's input over the calibration batches.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.models import StructureInfo, inspect_model
from autocompress.modules import is_conv1d, weight_matrix
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies._base import POLICIES, Calibration, Policy, input_norms, modules_for

# attributes of an attention module holding the head count, and those holding heads * head_dim
_HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_head")
_HEAD_WIDTH_ATTRS = ("all_head_size", "split_size")
_NEURON_COUNT_ATTRS = ("intermediate_size",)


def _unit_index(units: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Row/column indices covered by `units` (each unit is `unit_size` consecutive features)."""
    return (units[:, None] * unit_size + torch.arange(unit_size)).flatten()


def _producer_rows(structure: StructureInfo, idx: torch.Tensor) -> torch.Tensor:
    """Output rows of a producer for feature indices `idx` (repeated in the q, k and v thirds if fused)."""
    if not structure.fused_qkv:
        return idx
    width = structure.units * structure.unit_size
    return torch.cat([idx + t * width for t in range(3)])


def _resize(module: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Keep only `rows` (outputs, bias too) and/or `cols` (inputs) of a Linear or Conv1D, in place.

    The module object stays the same (hooks and references survive); its parameters are replaced by new,
    smaller ones with the same dtype, device and requires_grad, and its size attributes are updated.
    """
    if not (isinstance(module, nn.Linear) or is_conv1d(module)):
        raise TypeError(f"{type(module).__name__} is not a Linear or Conv1D; cannot remove units from it")
    w = weight_matrix(module)  # [out, in]
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    grad = module.weight.requires_grad
    if is_conv1d(module):
        module.weight = nn.Parameter(w.t().contiguous().clone(), requires_grad=grad)
        module.nx, module.nf = w.shape[1], w.shape[0]
    else:
        module.weight = nn.Parameter(w.contiguous().clone(), requires_grad=grad)
        module.in_features, module.out_features = w.shape[1], w.shape[0]
    if rows is not None and module.bias is not None:
        b = module.bias.data.index_select(0, rows.to(module.bias.device)).clone()
        module.bias = nn.Parameter(b, requires_grad=module.bias.requires_grad)


def prune_units(model: nn.Module, structure: StructureInfo, keep: torch.Tensor) -> None:
    """Physically keep only the units `keep` (indices into 0..units-1) of `structure`, in place.

    Shrinks every producer's output rows (for fused q|k|v, in each third) with their biases and the
    consumer's input columns (bias unchanged), then updates the head/neuron count attributes of the
    structure's module (BERT: num_attention_heads, all_head_size; GPT-2: num_heads, split_size; Llama MLP:
    intermediate_size; Llama attention reads only head_dim and needs nothing). Keeping every unit is a
    no-op. Raises ValueError for an empty, duplicated or out-of-range `keep`.
    """
    keep = torch.as_tensor(keep, dtype=torch.long).flatten().cpu()
    keep = keep.sort().values
    if keep.numel() == 0 or keep.unique().numel() != keep.numel() or keep[0] < 0 or keep[-1] >= structure.units:
        raise ValueError(f"{structure.name}: keep must be distinct unit indices in 0..{structure.units - 1}, "
                         f"at least one; got {keep.tolist()}")
    if keep.numel() == structure.units:
        return
    idx = _unit_index(keep, structure.unit_size)
    for name in structure.producers:
        _resize(model.get_submodule(name), rows=_producer_rows(structure, idx))
    _resize(model.get_submodule(structure.consumer), cols=idx)
    owner = model.get_submodule(structure.name)
    n = keep.numel()
    if structure.kind == "heads":
        for attr in _HEAD_COUNT_ATTRS:
            if isinstance(getattr(owner, attr, None), int):
                setattr(owner, attr, n)
        for attr in _HEAD_WIDTH_ATTRS:
            if isinstance(getattr(owner, attr, None), int):
                setattr(owner, attr, n * structure.unit_size)
        if isinstance(getattr(owner, "num_key_value_heads", None), int):  # MHA only: kv heads == heads
            owner.num_key_value_heads = n
    else:
        for attr in _NEURON_COUNT_ATTRS:
            if isinstance(getattr(owner, attr, None), int):
                setattr(owner, attr, n)


@torch.no_grad()
def unit_scores(model: nn.Module, structure: StructureInfo, act_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Importance of each unit, float32 [units]. With `act_norms` (the consumer's per-input RMS activation,
    [units * unit_size]) the Wanda score; without, the magnitude score (see the module docstring)."""
    u, n = structure.unit_size, structure.units
    wc = weight_matrix(model.get_submodule(structure.consumer)).float()
    col = wc.norm(dim=0)  # [n * u]
    if act_norms is not None:
        return (col * act_norms.to(col.device).float()).reshape(n, u).sum(1).cpu()
    score = col.reshape(n, u).norm(dim=1)
    for name in structure.producers:
        wp = weight_matrix(model.get_submodule(name)).float()
        parts = wp.reshape(3, n, -1) if structure.fused_qkv else wp.reshape(1, n, -1)
        score = score + parts.norm(dim=2).sum(0)
    return score.cpu()


@POLICIES.register("structured")
class StructuredPolicy(Policy):
    """Removes the planned share of heads/neurons of each structure entry (see the module docstring).

    Contract: validates every entry (known structure key, no grouped-query head pruning, calibration for
    wanda) before changing anything; wanda statistics are gathered once, on the model as given.
    """

    name = "structured"

    def handles(self, entry: LayerPlan) -> bool:
        return entry.pattern == "structured" and entry.prunes

    def needs_calibration(self, entry: LayerPlan) -> bool:
        return entry.prune_method == "wanda"

    def apply(self, model: nn.Module, plan: CompressionPlan, calibration: Calibration | None) -> None:
        entries = self.entries(plan)
        if not entries:
            return
        known = inspect_model(model).structures
        structs: dict[str, StructureInfo] = {}
        for name in entries:
            s = known.get(name)
            if s is None:
                examples = ", ".join(list(known)[:2]) or "none found in this model"
                raise UserError(f"plan layer {name!r}: pattern=structured needs a structure key (attention heads "
                                f"or FFN neurons) and this is not one; structures look like {examples}")
            if s.kind == "heads" and s.kv_groups > 1:
                raise UserError(f"plan layer {name!r}: head pruning with grouped-query attention is not "
                                "supported; prune neurons instead")
            structs[name] = s
        wanda = [n for n, e in entries.items() if e.prune_method == "wanda"]
        norms: dict[str, torch.Tensor] = {}
        if wanda:
            cal = self.require(calibration, wanda[0], "wanda structured pruning")
            consumers = sorted({structs[n].consumer for n in wanda})
            norms = input_norms(cal.input_grams(model, modules_for(model, consumers)))
        for name, entry in entries.items():
            s = structs[name]
            n_remove = min(round(entry.sparsity * s.units), s.units - 1)
            if n_remove <= 0:
                continue
            acts = norms[s.consumer] if entry.prune_method == "wanda" else None
            order = torch.argsort(unit_scores(model, s, acts), stable=True)
            prune_units(model, s, order[n_remove:])
