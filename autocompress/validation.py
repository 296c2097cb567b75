"""Check a plan against a model's inventory before any weight is touched."""

from __future__ import annotations

from autocompress.errors import UserError
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan, resolve_rank
from autocompress.selection import suggest


def validate_plan(plan: CompressionPlan, info: ModelInfo) -> None:
    """Raise `UserError` (one line, naming the layer and the fix) if `plan` cannot be applied to the model.

    Checks: every key is a layer or a structure of the model; structure keys carry only structured pruning
    and Linear keys never do; a rank fits its layer and does not grow it; head pruning is not asked of grouped-query attention.
    """
    for name, entry in plan.layers.items():
        if name in info.structures:
            s = info.structures[name]
            if entry.pattern != "structured":
                raise UserError(f"plan layer {name!r} is a structure ({s.kind}); it takes only "
                                "pattern: structured with a sparsity (put bits/rank on its Linear layers)")
            if s.kind == "heads" and s.kv_groups > 1:
                raise UserError(f"plan layer {name!r}: head pruning with grouped-query attention is not "
                                "supported; prune the block's FFN neurons instead")
            continue
        if name not in info.layers:
            raise UserError(f"plan layer {name!r} is not a layer of this {info.model_type} model"
                            + suggest(name, [*info.layers, *info.structures]))
        li = info.layers[name]
        if entry.pattern == "structured":
            owners = [s.name for s in info.structures.values() if name in (*s.producers, s.consumer)]
            hint = f"; put it on the structure {owners[0]!r}" if owners else "; this layer has no structure"
            raise UserError(f"plan layer {name!r}: pattern structured applies to heads/neurons, not to one "
                            f"Linear{hint}")
        if entry.rank is not None:
            rank = resolve_rank(entry.rank, li.out_features, li.in_features)
            full = min(li.in_features, li.out_features)
            if rank > full:
                raise UserError(f"plan layer {name!r}: rank {rank} is larger than the layer allows "
                                f"(min(in, out) = {full}); use a rank <= {full} or a fraction")
            break_even = li.in_features * li.out_features // (li.in_features + li.out_features)
            if rank > break_even:
                raise UserError(f"plan layer {name!r}: rank {rank} would grow the layer (two factors hold more "
                                f"than the {li.out_features}x{li.in_features} weight above rank {break_even}); "
                                f"use a rank <= {break_even}")
