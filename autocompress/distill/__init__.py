"""Knowledge distillation as a compression step: train a compressed model to match its original.

`DistillConfig` is plain plan-side data defined in `autocompress.distill_spec` (which `autocompress.plan`
imports, so the plan type does not depend on this package) and re-exported here; everything else here needs
torch and is imported on first use:
  - `distill(student, teacher, batches, cfg, task, ...) -> DistillResult`   (train.py)
  - `apply_and_distill(base_model, plan, calibration, info, ...)`           (train.py)
  - `constrain` / the constraint helpers that keep a plan true while training (constraints.py), with the
    straight-through fake quantization they train through (ste.py)
  - the losses (losses.py) and the row batching of calibration data (batching.py)
"""

from __future__ import annotations

from typing import Any

from autocompress.distill_spec import DistillConfig

_LAZY = {"distill": "train", "apply_and_distill": "train", "DistillResult": "train"}

__all__ = ["DistillConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"autocompress.distill.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'autocompress.distill' has no attribute {name!r}")
