"""`remove_blocks`: whole transformer blocks physically removed from a model, its config made to match.

What changes, on the model given (in place):
  - the block list (`ModelInfo.block_prefix`: Llama's `model.layers`, GPT-2's `transformer.h`, BERT's
    `encoder.layer`) is replaced by a new `nn.ModuleList` of the kept blocks, in order;
  - the model's config is replaced by an updated deep copy, on every module that held the old one (the old
    object is never changed, so a `ModelWorkspace.restore` puts the full model back): the block count
    (`num_hidden_layers`, GPT-2's `n_layer` through its attribute map, `num_layers`) and every per-layer list
    of the config (a list attribute whose name holds "layer" and whose length is the old block count, such
    as `layer_types`), keeping the kept blocks' entries;
  - every module's `layer_idx` inside a kept block is set to its block's new index, so a decoder's KV cache
    (`DynamicCache(config=...)` builds one layer per remaining block) is addressed 0..n-k-1.
What does not change: the weights of the kept blocks, and what a block computes. (GPT-2 with
`scale_attn_by_inverse_layer_idx` keeps each block's scale from its original index; a model rebuilt from the
exported config would compute it from the new index.)
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from autocompress.depth.plan import check_drop_blocks, kept_blocks

COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _parent_and_attr(model: nn.Module, prefix: str) -> tuple[nn.Module, str]:
    parent, _, attr = prefix.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def reduced_config(config: Any, drop: tuple[int, ...], num_blocks: int) -> Any:
    """A deep copy of the transformers `config` for the model without blocks `drop` (module docstring);
    `config` itself is left as it is."""
    new = copy.deepcopy(config)
    kept = kept_blocks(drop, num_blocks)
    for key in COUNT_KEYS:
        if getattr(new, key, None) == num_blocks:
            setattr(new, key, len(kept))
    for key, value in vars(new).items():
        if "layer" in key and isinstance(value, (list, tuple)) and len(value) == num_blocks:
            setattr(new, key, type(value)(value[b] for b in kept))
    return new


def remove_blocks(model: nn.Module, drop: tuple[int, ...], info: Any) -> nn.Module:
    """Remove the blocks `drop` (original indices) from `model` in place, as the module docstring says, and
    return it. `info` is the model's `ModelInfo` (its block list and count). Raises `UserError` for blocks that
    cannot be dropped (`check_drop_blocks`). No blocks: the model is returned untouched."""
    if not drop:
        return model
    check_drop_blocks(drop, info)
    blocks_list = model.get_submodule(info.block_prefix)
    n = len(blocks_list)
    kept = kept_blocks(drop, n)
    parent, attr = _parent_and_attr(model, info.block_prefix)
    setattr(parent, attr, nn.ModuleList([blocks_list[b] for b in kept]))
    for new, block in enumerate(parent.get_submodule(attr)):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    old = getattr(model, "config", None)
    if old is not None:
        new_config = reduced_config(old, drop, n)
        for module in model.modules():
            if vars(module).get("config") is old:
                module.config = new_config
    return model
