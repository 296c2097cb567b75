"""What each export format does with a plan's pruned vocabulary.

  - `autocompress` (packed): the token table and the LM head are stored with the kept rows only (as any other
    table / Linear: packed at their bits when quantized), and the id map as the int32 tensor
    `<token table>.vocab_id_map` [vocab_size] in model.safetensors (counted by `plan_size` in other_bytes, so
    the export and the size model agree to the byte). config.json keeps the original vocab_size.
    `load_compressed` builds the architecture, then `restore_skeleton` gives it a table and head of the stored
    rows and the id map, and `reattach` puts the id map back on modules the CPU kernels replaced: the loaded
    model takes the original tokenizer's ids and returns logits over them, as the search scored it;
  - `compressed-tensors` and `gguf`: refused (`UserError`, before anything is written). Both formats are read
    by engines (vLLM, llama.cpp) that index the token table and the head by the tokenizer's ids and have no
    place for an id map in front of the table or for mapping the logits back; a table of fewer rows would
    silently read the wrong rows. Export a pruned vocabulary with `--format autocompress`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.modules import set_module
from autocompress.vocab.runtime import GATHER, MAP, attach_head, attach_table


def refusal(fmt: str, plan: Any) -> str:
    """The one-line refusal of the `fmt` export for a plan with a pruned vocabulary."""
    return (f"{fmt} export: the plan prunes the vocabulary ({plan.vocab.summary()}), and {fmt} has no place for "
            "the id map its engines would need (they index the table and head by the tokenizer's ids); export "
            "with --format autocompress, or drop vocab from the plan")


def check_format(fmt: str, plan: Any) -> None:
    """`UserError` (`refusal`) when `plan` prunes the vocabulary: for the formats that cannot hold it."""
    if getattr(plan, "vocab", None) is not None:
        raise UserError(refusal(fmt, plan))


def stored_id_map(tensors: Mapping[str, torch.Tensor]) -> tuple[str, torch.Tensor] | None:
    """(token table name, id map) stored in an export's tensors, or None (the vocabulary is whole)."""
    suffix = f".{MAP}"
    key = next((k for k in tensors if k.endswith(suffix)), None)
    return None if key is None else (key[: -len(suffix)], tensors[key])


def _head_name(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    return next((n for n, m in model.named_modules() if m is head), None) if head is not None else None


def restore_skeleton(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Give the freshly built `model` the pruned token table and LM head that `tensors` (an export's) hold, each
    with the id map (vocab/runtime.py), so that the stored state loads into it. No-op without a stored map."""
    found = stored_id_map(tensors)
    if found is None:
        return
    table_name, id_map = found
    rows = tensors.get(f"{table_name}.weight")
    n = int(id_map.max()) + 1 if rows is None else rows.shape[0]
    table = model.get_submodule(table_name)
    weight = table.weight
    new_table = nn.Embedding(n, table.embedding_dim, device=weight.device, dtype=weight.dtype)
    attach_table(new_table, id_map)
    set_module(model, table_name, new_table)
    head_name = _head_name(model)
    if head_name is not None and head_name != table_name:
        head = model.get_submodule(head_name)
        if isinstance(head, nn.Linear) and head.out_features == id_map.numel():
            new_head = nn.Linear(head.in_features, n, bias=head.bias is not None, device=head.weight.device,
                                 dtype=head.weight.dtype)
            attach_head(new_head, id_map)
            set_module(model, head_name, new_head)


def reattach(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """After the CPU kernels replaced modules (a packed table, a kernel head), give the token table and the LM
    head their id map and logit map again. No-op without a stored map."""
    found = stored_id_map(tensors)
    if found is None:
        return
    table_name, id_map = found
    table = model.get_submodule(table_name)
    if MAP not in table._buffers:
        attach_table(table, id_map)
    head_name = _head_name(model)
    head = model.get_submodule(head_name) if head_name is not None else None
    if head is not None and head is not table and GATHER not in head._buffers:
        attach_head(head, id_map)


def card_lines(plan: Any) -> list[str]:
    """The model card's "Vocabulary" section (empty without a pruned vocabulary)."""
    vocab = getattr(plan, "vocab", None)
    if vocab is None:
        return []
    return ["## Vocabulary", "",
            f"The plan prunes the vocabulary ({vocab.summary()}): the token table and the LM head hold the kept "
            "rows only. "
            "The model still takes the original tokenizer's ids: an id map in front of the table sends every "
            "dropped id to the fallback row (a kept unknown token, or the mean of the dropped rows), and the "
            "logits come back over the original ids, that row's probability shared evenly by every id it stands "
            "for. Text of another domain "
            "than the calibration corpus loses the most.", ""]
