"""autocompress: AutoML compression search for PyTorch / Hugging Face transformers models.

`import autocompress` is cheap: it imports neither torch, transformers, ray nor mlflow. The heavier names
below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from autocompress.errors import UserError
from autocompress.plan import PLAN_VERSION, CompressionPlan, LayerPlan

__version__ = "0.1.0"

_LAZY = {
    "load_model": "autocompress.loading",
    "inspect_model": "autocompress.models",
    "ModelInfo": "autocompress.models",
    "Rule": "autocompress.selection",
    "build_plan": "autocompress.selection",
    "uniform_plan": "autocompress.selection",
    "select_layers": "autocompress.selection",
    "validate_plan": "autocompress.validation",
    "apply_plan": "autocompress.policies",
    "Calibration": "autocompress.policies",
    "plan_size": "autocompress.evaluators.size",
    "FidelityEvaluator": "autocompress.evaluators.fidelity",
    "PerplexityEvaluator": "autocompress.evaluators.perplexity",
    "NextTokenEvaluator": "autocompress.evaluators.next_token",
    "generate_samples": "autocompress.evaluators.generation",
    "AccuracyEvaluator": "autocompress.evaluators.accuracy",
    "load_texts": "autocompress.data",
    "make_batches": "autocompress.data",
    "run_search": "autocompress.search.driver",
    "save_compressed": "autocompress.export",
    "load_compressed": "autocompress.export",
    "DistillConfig": "autocompress.distill_spec",
}

__all__ = ["PLAN_VERSION", "CompressionPlan", "LayerPlan", "UserError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
