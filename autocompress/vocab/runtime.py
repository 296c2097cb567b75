"""A pruned vocabulary at run time: the id map in front of the token table, the head's logits mapped back.

The pruned token table and LM head are plain `nn.Embedding(n, dim)` / `nn.Linear(dim, n)` modules of the kept
rows (so quantization, packing, kernels and the GGUF writer see ordinary modules). What makes them take and
give the ORIGINAL tokenizer's ids is attached to them:

  - the table holds the id map as the buffer `vocab_id_map` (int32 [vocab_size], original id -> row; every
    dropped id -> the fallback's row), saved with the model's state, and a forward pre-hook that maps the
    input ids through it: `model(input_ids=...)` takes original ids, and a dropped id reads the fallback's row;
  - the head (a causal LM's) has a forward hook that turns its n logits back into logits over the original
    vocabulary_size ids: a kept id gets its row's logit; the ids that share the fallback's row (the D dropped
    ids, plus the fallback token when the row is a kept token's rather than the mean row) get that row's logit
    minus log(their number). The fallback row thus stands for "a token outside the kept set"
    and its probability is spread evenly over the ids it stands for, so the output is still a normalized
    distribution over the original vocabulary: perplexity and KL against the original model are measured on
    the same ids as before (a target outside the kept set costs -log(p_row / ids of the row)), and greedy
    generation never picks a dropped id unless the fallback's row is the most likely, when the lowest id of
    that row comes out.
    The head's buffers (`vocab_gather` int64, `vocab_penalty` float) are not saved: `attach_vocab` rebuilds
    them from the id map.

A generic many-to-one map works the same way: every row's logit is shared evenly by the ids mapped to it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MAP = "vocab_id_map"
GATHER, PENALTY = "vocab_gather", "vocab_penalty"


def build_id_map(keep_ids: list[int], fallback: int | None, vocab_size: int) -> torch.Tensor:
    """int32 [vocab_size]: the row of each original id among the sorted `keep_ids` (which hold `fallback`);
    every other id -> the fallback's row, or, with `fallback` None, the row after the kept ones (the mean row)."""
    ids = torch.as_tensor(sorted(set(keep_ids)), dtype=torch.long)
    rows = torch.arange(ids.numel(), dtype=torch.int32)
    fb_row = ids.numel() if fallback is None else int(torch.searchsorted(ids, torch.tensor(fallback)))
    id_map = torch.full((vocab_size,), fb_row, dtype=torch.int32)
    id_map[ids] = rows
    return id_map


def _map_ids(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Forward pre-hook of a pruned token table: input ids (original) -> rows."""
    if args:
        return (getattr(module, MAP)[args[0]], *args[1:]), kwargs
    return args, {**kwargs, "input": getattr(module, MAP)[kwargs["input"]]}


def _expand_logits(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a pruned LM head: logits over the kept rows -> logits over the original ids."""
    gather, penalty = getattr(module, GATHER), getattr(module, PENALTY)
    return output.index_select(-1, gather) - penalty.to(output.dtype)


def attach_table(table: nn.Module, id_map: torch.Tensor) -> None:
    """Give a pruned token table its id map (a buffer saved with the state) and the hook that reads it."""
    if MAP in table._buffers:
        table._buffers[MAP] = id_map.to(torch.int32)
    else:
        table.register_buffer(MAP, id_map.to(device=_device(table), dtype=torch.int32))
        table.register_forward_pre_hook(_map_ids, with_kwargs=True)


def attach_head(head: nn.Module, id_map: torch.Tensor) -> None:
    """Give a pruned LM head the hook that returns logits over the original ids (module docstring)."""
    gather = id_map.to(torch.long)
    shared = torch.bincount(gather)[gather].to(torch.float32)
    device = _device(head)
    fresh = GATHER not in head._buffers
    head.register_buffer(GATHER, gather.to(device), persistent=False)
    head.register_buffer(PENALTY, shared.log().to(device), persistent=False)
    if fresh:
        head.register_forward_hook(_expand_logits)


def _device(module: nn.Module) -> torch.device:
    t = next(iter([*module.parameters(), *module.buffers()]), None)
    return t.device if t is not None else torch.device("cpu")


def id_map_of(model: nn.Module) -> torch.Tensor | None:
    """The id map of `model`'s pruned token table, or None for a model whose vocabulary is whole."""
    table = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if table is not None and MAP in table._buffers:
        return table._buffers[MAP]
    return next((m._buffers[MAP] for m in model.modules() if MAP in m._buffers), None)


def fallback_class(id_map: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """bool, shaped like `ids` (original ids): True where the id falls in the fallback's class (a dropped id, or
    the fallback itself): the tokens the pruned model cannot tell apart."""
    id_map = id_map.to(ids.device).long()
    shared = torch.bincount(id_map) > 1
    return shared[id_map[ids]]
