"""Depth pruning: whole transformer blocks removed from a model (ShortGPT-style).

`plan.py` is plain data that `autocompress.plan` imports (the `drop_blocks` entry, its checks); the rest is
imported from its module:
  - `reduced` (reduce.py): a plan and an inventory with the dropped blocks gone and the rest renumbered, the
    view every counter (size, memory, latency) and every exporter works on
  - `remove_blocks` (apply.py): the blocks physically removed from a transformers model, its config updated
  - `block_influence`, `influence_order` (influence.py): ShortGPT's Block Influence on calibration data
  - `resolve_order`, `load_or_measure` (cache.py): Block Influence computed once per run (RUN_DIR cache) and
    written into the run's `space.depth.order`
  - `blocks` (inventory.py): the blocks as `autocompress inspect` lists them
The search space's side is `autocompress.spaces.depth` (`space.depth`).
"""

from __future__ import annotations

from autocompress.depth.plan import check_drop_blocks, kept_blocks, normalize_drop_blocks

__all__ = ["check_drop_blocks", "kept_blocks", "normalize_drop_blocks"]
