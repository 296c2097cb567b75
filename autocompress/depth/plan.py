"""The plan-level `drop_blocks` entry: which whole transformer blocks a plan removes, as plain data (no torch).

`CompressionPlan.drop_blocks` is a sorted tuple of block indices of the ORIGINAL model (JSON key "drop_blocks",
a list, written only when non-empty, so plans without it read and write as before). The indices always refer
to the model the plan is written against; the remaining blocks are renumbered 0..n-k-1 when the blocks are
removed (apply.py), and every per-block part of the plan moves with its block (reduce.py). This module gives
the type check (`normalize_drop_blocks`), the check against a model (`check_drop_blocks`) and the MLflow and
summary forms.
"""

from __future__ import annotations

from typing import Any

from autocompress.errors import UserError

FIELD = "drop_blocks"


def normalize_drop_blocks(value: Any, where: str = "plan") -> tuple[int, ...]:
    """`value` (a list or tuple of block indices, or None) as a sorted tuple. Raises `UserError` (one line,
    prefixed with `where`) for something that is not a list, an index that is not an integer >= 0, or an index
    given twice."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise UserError(f"{where}: {FIELD}={value!r} must be a list of block indices, e.g. [5, 7]")
    seen: set[int] = set()
    for block in value:
        if type(block) is not int or block < 0:
            raise UserError(f"{where}: {FIELD} holds {block!r}; each entry must be a block index (an integer >= 0)")
        if block in seen:
            raise UserError(f"{where}: {FIELD} names block {block} twice; list each block once")
        seen.add(block)
    return tuple(sorted(seen))


def check_drop_blocks(drop: tuple[int, ...], info: Any) -> None:
    """Raise `UserError` (one line naming the field and the fix) if the blocks `drop` cannot be removed from
    the model of `info` (a `ModelInfo`): a model without repeated blocks, an index out of range, or every block."""
    if not drop:
        return
    blocks = info.extra.get("num_blocks") or 0
    if not info.block_prefix or not blocks:
        raise UserError(f"{FIELD}: this {info.model_type} model has no repeated transformer blocks to drop; "
                        f"remove {FIELD} from the plan")
    for block in drop:
        if block >= blocks:
            raise UserError(f"{FIELD}: block {block} is out of range; this model has {blocks} blocks "
                            f"(0..{blocks - 1})")
    if len(drop) >= blocks:
        raise UserError(f"{FIELD}: all {blocks} blocks are dropped; keep at least one (drop at most {blocks - 1})")


def kept_blocks(drop: tuple[int, ...], num_blocks: int) -> list[int]:
    """The original indices of the blocks that remain, in order (new index i holds original block kept[i])."""
    gone = set(drop)
    return [b for b in range(num_blocks) if b not in gone]


def flatten(drop: tuple[int, ...]) -> dict[str, Any]:
    """MLflow parameters: {"drop_blocks": "3,5", "drop_blocks.count": 2} ({} when nothing is dropped)."""
    if not drop:
        return {}
    return {FIELD: ",".join(map(str, drop)), f"{FIELD}.count": len(drop)}


def summary(drop: tuple[int, ...]) -> str:
    """e.g. "drop 2 blocks (3, 5)", "drop 1 block (7)"."""
    return f"drop {len(drop)} block{'s' if len(drop) != 1 else ''} ({', '.join(map(str, drop))})"


def check_depth_plan(plan: Any, info: Any) -> None:
    """`check_drop_blocks` for `plan.drop_blocks`, and: no hidden-state distillation beside dropped blocks (the
    smaller model's block outputs do not line up with the original's; output distillation is fine)."""
    drop = plan.drop_blocks
    check_drop_blocks(drop, info)
    if drop and plan.distill is not None and plan.distill.beta > 0:
        raise UserError(f"{FIELD} with distill.beta={plan.distill.beta:g}: the smaller model's block outputs do not "
                        "line up with the original's; set distill.beta: 0 (match the outputs only)")
