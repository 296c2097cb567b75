"""`save_compressed`: write a compressed model as a self-contained packed export directory.

The directory (FORMAT_VERSION 3; version 2 added packed embedding tables, version 3 the smoothing vectors of
smoothed layers; version 1 and 2 exports still load):
  model.safetensors  every tensor (see `packed.py`), the per-layer metadata as JSON in `__metadata__`
                     ("format", "format_version", "dtype", "layers", "tied")
  config.json        the original model config (the policies never change `model.config`)
  tokenizer files    when a tokenizer is given (`tokenizer.save_pretrained`)
  plan.json          the plan (`CompressionPlan.save`)
  README.md          the caller's model card, or a minimal one
  export.json        format and version, model class, task, dtype, per-layer layout and bytes, the totals
                     (tensor, file and predicted bytes) and every difference from the prediction; written
                     last, so a directory without it is an incomplete export.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from autocompress.errors import UserError
from autocompress.evaluators.size import plan_size
from autocompress.export.packed import PackedModel, pack_model
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan

FORMAT_NAME = "autocompress.packed"
FORMAT_VERSION = 3
FILES = ("model.safetensors", "config.json", "plan.json", "README.md", "export.json")


@dataclass(frozen=True)
class ExportReport:
    """What `save_compressed` wrote. `tensor_bytes` (the sum of the tensors' bytes) equals `predicted_bytes`
    (`plan_size(plan, info).total_bytes`) unless `differences` explains why; `file_bytes` adds the
    safetensors header. `per_layer` and `formats` are the stored bytes and layout of each Linear layer and embedding table."""

    out_dir: str
    files: list[str]
    tensor_bytes: int
    predicted_bytes: int
    file_bytes: int
    per_layer: dict[str, int] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)

    @property
    def file_ratio(self) -> float:
        """model.safetensors bytes / predicted bytes."""
        return self.file_bytes / self.predicted_bytes if self.predicted_bytes else float("nan")


def differences(packed: PackedModel, predicted_other: int) -> list[str]:
    """One line for each layer (and for the non-Linear parameters) whose stored bytes or layout differ from
    the size model's, with the reason where it is known."""
    out = []
    for name, rec in packed.layers.items():
        if rec["bytes"] != rec["predicted_bytes"] or rec["layout"] != rec["predicted_layout"]:
            out.append(f"{name}: {rec['bytes']} bytes as {rec['layout']}, predicted {rec['predicted_bytes']} "
                       f"as {rec['predicted_layout']}")
    other = packed.tensor_bytes - sum(rec["bytes"] for rec in packed.layers.values())
    if other != predicted_other:
        why = (" (a tied weight whose Linear was factorized is stored apart from its factors)"
               if other > predicted_other else "")
        out.append(f"other parameters: {other} bytes, predicted {predicted_other}{why}")
    return out


def _card(model: nn.Module, plan: CompressionPlan, info: ModelInfo, report: dict[str, Any]) -> str:
    return (f"# {info.model_type} compressed by autocompress\n\n"
            f"Model class `{type(model).__name__}`, task `{info.task}`. Plan: {plan.summary()}.\n\n"
            f"Packed weights: {report['tensor_bytes'] / 1e6:.2f} MB "
            f"(original {info.total_params * info.dtype_bytes / 1e6:.2f} MB).\n\n"
            "Load it with:\n\n```python\nfrom autocompress.export import load_compressed\n"
            "cm = load_compressed(\"path/to/this/directory\")  # cm.model, cm.tokenizer\n```\n")


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def save_compressed(model: nn.Module, plan: CompressionPlan, info: ModelInfo, out_dir: str, tokenizer: Any = None,
                    base_config: Any = None, card: str | None = None) -> ExportReport:
    """Write `model` (what `apply_plan(model, plan, info=info)` returned; `info` is the ORIGINAL model's
    inventory) to `out_dir` in the packed format (see the module docstring) and return the `ExportReport`.
    `base_config` (a transformers config) replaces `model.config` in config.json. Raises `UserError` when
    `out_dir` is a file or the model has no config, ValueError when the model does not realize the plan."""
    from safetensors.torch import save_file

    out_dir = os.fspath(out_dir)
    config = base_config if base_config is not None else getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise UserError("export: the model has no transformers config; pass base_config=<the original config>")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"export directory {out_dir!r} is a file; give a new or existing directory")
    packed = pack_model(model, plan, info)
    sizes = plan_size(plan, info)
    os.makedirs(out_dir, exist_ok=True)
    stale = os.path.join(out_dir, "export.json")
    if os.path.exists(stale):
        os.remove(stale)  # the directory is not a complete export until export.json is written again
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "dtype": packed.dtype,
              "layers": json.dumps(packed.layers, sort_keys=True), "tied": json.dumps(packed.tied, sort_keys=True)}
    weights = os.path.join(out_dir, "model.safetensors")
    save_file(packed.tensors, weights + ".tmp", metadata=header)
    os.replace(weights + ".tmp", weights)
    config.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    plan.save(os.path.join(out_dir, "plan.json"))
    diffs = differences(packed, sizes.other_bytes)
    report = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_class": type(model).__name__,
        "model_type": info.model_type, "task": info.task, "dtype": packed.dtype,
        "tensor_bytes": packed.tensor_bytes, "file_bytes": os.path.getsize(weights),
        "predicted_bytes": sizes.total_bytes, "original_bytes": sizes.original_bytes,
        "other_bytes": packed.tensor_bytes - sum(r["bytes"] for r in packed.layers.values()),
        "predicted_other_bytes": sizes.other_bytes, "differences": diffs, "tied": packed.tied,
        "layers": {n: {k: v for k, v in r.items() if k != "matrices"} for n, r in packed.layers.items()},
    }
    _write_text(os.path.join(out_dir, "README.md"), card if card is not None else _card(model, plan, info, report))
    _write_text(stale, json.dumps(report, indent=2) + "\n")
    return ExportReport(out_dir=str(out_dir), files=sorted(os.listdir(out_dir)), tensor_bytes=packed.tensor_bytes,
                        predicted_bytes=sizes.total_bytes, file_bytes=report["file_bytes"],
                        per_layer={n: r["bytes"] for n, r in packed.layers.items()},
                        formats={n: r["layout"] for n, r in packed.layers.items()}, differences=diffs)
