"""`space.depth`: which whole blocks a search drops (`DepthChoices`), drawn after every other decision.

mode "influence": one unit `depth`, param `depth.drop` in 0..max_drop (0 first); the plan drops the first k
blocks of `order` (least important first: ShortGPT's Block Influence, autocompress/depth/influence.py, resolved
into the section before the search starts, depth/cache.py). mode "switches": one unit per block,
`depth.block<i>`, param `depth.block<i>.drop` in [False, True]; when more than max_drop are drawn, the first
max_drop of them in `order` (by index without one) are dropped, so every plan keeps at least one block.
"The first choice", which the uniform baselines give techniques they do not test, drops nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from autocompress.config import DepthSpace
from autocompress.errors import UserError
from autocompress.models import ModelInfo

UNIT = "depth"
FIELDS = {"drop"}
Pick = Callable[[str, str, Sequence[Any]], Any]


class DepthChoices:
    """The decisions of one `space.depth` section on one model. `UserError` (one line) for a model without
    repeated blocks, a max_drop that leaves no block, an `order` that is not a list of the model's blocks, mode
    "influence" whose order is not resolved yet when a plan drops blocks (a search resolves it before it starts:
    autocompress.depth.cache.resolve_order), or hidden-state distillation offered beside it."""

    def __init__(self, section: DepthSpace, info: ModelInfo, distill: Any = None) -> None:
        self.section = section
        blocks = info.extra.get("num_blocks") or 0
        if not info.block_prefix or blocks < 2:
            raise UserError(f"space.depth: this {info.model_type} model has {blocks} repeated blocks; dropping "
                            "needs at least 2; remove space.depth")
        if section.max_drop >= blocks:
            raise UserError(f"space.depth.max_drop={section.max_drop} leaves no block of this model's {blocks}; "
                            f"use at most {blocks - 1}")
        order = section.order
        if order is not None and (sorted(order) != list(range(blocks))):
            raise UserError(f"space.depth.order must list each of the model's {blocks} blocks (0..{blocks - 1}) "
                            "once, least important first; or leave it out for Block Influence")
        if distill is not None and any(b > 0 for b in distill.choices("beta")):
            raise UserError("space.depth with space.distill.beta > 0: the smaller model's block outputs do not "
                            "line up with the original's; set space.distill.beta: 0")
        self.order = list(order) if order is not None else None
        self.info = info
        self.units = [UNIT] if section.mode == "influence" else [f"{UNIT}.block{i}" for i in range(blocks)]

    def draw(self, pick: Pick) -> tuple[int, ...]:
        """The blocks to drop (original indices, sorted) from `pick(unit, field, choices)`."""
        if self.section.mode == "influence":
            k = pick(UNIT, "drop", list(range(self.section.max_drop + 1)))
            if k and self.order is None:
                raise UserError("space.depth.order is not known yet: a search computes Block Influence on "
                                "data.calibration first (autocompress.depth.cache.resolve_order); give order, "
                                "or mode: switches")
            return tuple(sorted(self.order[:k])) if k else ()
        drawn = {i for i, unit in enumerate(self.units) if pick(unit, "drop", [False, True])}
        order = self.order if self.order is not None else range(len(self.units))
        return tuple(sorted([b for b in order if b in drawn][:self.section.max_drop]))

    def kept_entries(self, layers: dict[str, Any], drop: tuple[int, ...]) -> dict[str, Any]:
        """`layers` (plan entries by name) without those of the dropped blocks: they would be ignored anyway."""
        def block(name: str) -> int | None:
            item = self.info.layers.get(name) or self.info.structures.get(name)
            return None if item is None else item.block

        return {n: e for n, e in layers.items() if block(n) not in drop} if drop else layers
