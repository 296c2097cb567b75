"""`reduced(plan, info)`: the plan and the inventory of the model as it is once the plan's blocks are dropped.

Everything that counts or writes a compressed model (plan_size, plan_memory, plan_ops, the exporters, the
policies in apply_plan) works on this view, so the dropped blocks are counted nowhere and the per-block parts of
the plan land on the block that now holds them:
  - layers, structures and role groups of a dropped block are gone (their plan entries are ignored); those of a
    kept block are renamed to its new index (`model.layers.5.mlp.up_proj` -> `model.layers.4.mlp.up_proj`
    when block 3 is dropped), with `block` renumbered;
  - `total_params` loses the dropped blocks' parameters (`extra["block_params"]`, every parameter of each
    block, counted by `inspect_model`; an inventory without it falls back to the blocks' Linear layers);
    `extra["num_blocks"]` and `extra["block_params"]` describe the remaining blocks;
  - a `kv_cache` plan's per-block bits move with their blocks (those of dropped blocks are ignored); its global
    bits become the one width every block left shares, if they share one;
  - the returned plan has no `drop_blocks`: it is a plan for the smaller model.
A plan without `drop_blocks` comes back unchanged, with the same inventory object.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autocompress.depth.plan import check_drop_blocks, kept_blocks


def renamer(prefix: str, drop: tuple[int, ...], num_blocks: int):
    """A function: an original module name -> its name after the drop, or None for a module of a dropped block.
    Names outside the blocks come back unchanged."""
    new_index = {old: new for new, old in enumerate(kept_blocks(drop, num_blocks))}
    head = prefix + "."

    def rename(name: str) -> str | None:
        if not name.startswith(head):
            return name
        index, _, rest = name[len(head):].partition(".")
        if not index.isdigit():
            return name
        new = new_index.get(int(index))
        if new is None:
            return None
        return f"{head}{new}" + (f".{rest}" if rest else "")

    return rename


def reduced_info(info: Any, drop: tuple[int, ...]) -> Any:
    """`info` (a `ModelInfo`) of the model without the blocks `drop` (module docstring). Raises `UserError` for
    blocks that cannot be dropped (`check_drop_blocks`)."""
    if not drop:
        return info
    check_drop_blocks(drop, info)
    blocks = info.extra["num_blocks"]
    rename, kept = renamer(info.block_prefix, drop, blocks), kept_blocks(drop, blocks)
    new_index = {old: new for new, old in enumerate(kept)}
    per_block = info.extra.get("block_params")
    if per_block is None or len(per_block) != blocks:
        per_block = [sum(li.params for li in info.layers.values() if li.block == b) for b in range(blocks)]
    layers = {rename(n): dataclasses.replace(li, name=rename(n), block=_move(li.block, new_index))
              for n, li in info.layers.items() if rename(n) is not None}
    structures = {rename(n): dataclasses.replace(s, name=rename(n), producers=tuple(map(rename, s.producers)),
                                                 consumer=rename(s.consumer), block=_move(s.block, new_index))
                  for n, s in info.structures.items() if rename(n) is not None}
    groups = {rename(g): tuple(map(rename, members)) for g, members in info.groups.items() if rename(g) is not None}
    extra = dict(info.extra, num_blocks=len(kept), block_params=[per_block[b] for b in kept])
    return dataclasses.replace(info, layers=layers, structures=structures, groups=groups, extra=extra,
                               total_params=info.total_params - sum(per_block[b] for b in drop))


def _move(block: int | None, new_index: dict[int, int]) -> int | None:
    return None if block is None else new_index[block]


def reduced_plan(plan: Any, info: Any) -> Any:
    """`plan` for the model without its `drop_blocks` (module docstring), written against `info` (the original
    model's `ModelInfo`)."""
    from autocompress.kvcache.plan import KVCachePlan
    from autocompress.plan import CompressionPlan

    drop = plan.drop_blocks
    if not drop:
        return plan
    check_drop_blocks(drop, info)
    blocks = info.extra["num_blocks"]
    rename = renamer(info.block_prefix, drop, blocks)
    layers = {rename(n): entry for n, entry in plan.layers.items() if rename(n) is not None}
    kv = plan.kv_cache
    if kv is not None:
        widths = [kv.bits_for(old) for old in kept_blocks(drop, blocks)]
        common = widths[0] if len(set(widths)) == 1 else kv.bits if kv.bits in widths else max(widths, key=widths.count)
        kv = KVCachePlan(bits=common, group_size=kv.group_size, symmetric=kv.symmetric, layers=dict(enumerate(widths)))
    return CompressionPlan(layers, distill=plan.distill, kv_cache=kv, vocab=plan.vocab)


def reduced(plan: Any, info: Any) -> tuple[Any, Any]:
    """(`reduced_plan`, `reduced_info`): the plan and inventory of the model with the plan's blocks dropped;
    `(plan, info)` unchanged for a plan that drops none."""
    if not plan.drop_blocks:
        return plan, info
    return reduced_plan(plan, info), reduced_info(info, plan.drop_blocks)
