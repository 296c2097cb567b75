"""Knowledge distillation as a compression step: train a compressed model to match its original.

`DistillConfig` (config.py) is plain data that `autocompress.plan` imports; everything else here needs torch
and is imported on first use (so `import autocompress.plan` stays light and free of import cycles):
  - `distill(student, teacher, batches, cfg, task, ...) -> DistillResult`   (train.py)
  - `apply_and_distill(base_model, plan, calibration, info, ...)`           (train.py)
  - `constrain` / the constraint helpers that keep a plan true while training (constraints.py), with the
    straight-through fake quantization they train through (ste.py)
  - the losses (losses.py) and the row batching of calibration data (batching.py)
"""

from __future__ import annotations

from typing import Any

from autocompress.distill.config import DistillConfig

_LAZY = {"distill": "train", "apply_and_distill": "train", "DistillResult": "train"}

__all__ = ["DistillConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"autocompress.distill.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'autocompress.distill' has no attribute {name!r}")
