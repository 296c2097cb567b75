"""`save_compressed`: write a compressed model as a self-contained packed export directory (the `autocompress`
export format; `FORMAT` registers it in `formats.py`).

The directory (FORMAT_VERSION 5; version 2 added packed embedding tables, version 3 the smoothing vectors of
smoothed layers, version 4 the marked config.json, version 5 k-means codebooks and entropy-coded streams;
versions 1 to 4 still load):
  model.safetensors  every tensor (see `packed.py`), the per-layer metadata as JSON in `__metadata__`
                     ("format", "format_version", "dtype", "layers", "tied", and "coded" when the integer
                     streams are entropy-coded: `entropy.py`)
  config.json        the original model config (the policies never change `model.config`), marked: its
                     `model_type` is `MARKER`, which transformers does not know, so that a plain
                     `from_pretrained` fails with a message naming `autocompress.export.load_compressed`
                     instead of loading the packed tensors as a randomly initialized model; the original
                     model_type is kept under `autocompress_model_type` (`unmark_config` restores it)
  tokenizer files    when a tokenizer is given (`tokenizer.save_pretrained`: the chat template included)
  generation_config.json  for a model that generates
  plan.json          the plan (`CompressionPlan.save`), with its `kv_cache` entry: no tensor holds a KV cache,
                     `load_compressed` gives the loaded model the plan's quantized cache (export.json repeats it);
                     a `vocab` entry: the table and head hold the kept rows, model.safetensors the id map
                     (`autocompress.vocab.export`). A plan with `drop_blocks` is written as the plan of the
                     smaller model (blocks renumbered, `autocompress.depth.reduce`); config.json has the smaller
                     block count and export.json lists the dropped blocks' original indices under "drop_blocks"
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

from autocompress.depth.reduce import reduced
from autocompress.evaluators.size import plan_size
from autocompress.export.entropy import check_coder, coded_bytes, encode
from autocompress.export.formats import ExportFormat, write_side_files, writer_target
from autocompress.export.packed import PackedModel, pack_model
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan

FORMAT_NAME = "autocompress.packed"
FORMAT_VERSION = 5
MARKER = "autocompress-packed (not a plain transformers checkpoint: load it with autocompress.export.load_compressed)"
ORIGINAL_TYPE_KEY = "autocompress_model_type"
FILES = ("model.safetensors", "config.json", "plan.json", "README.md", "export.json")


@dataclass(frozen=True)
class ExportReport:
    """What `save_compressed` wrote. `tensor_bytes` (the sum of the tensors' bytes) equals `predicted_bytes`
    (`plan_size(plan, info).total_bytes`) unless `differences` explains why; `file_bytes` adds the
    safetensors header. `per_layer` and `formats` are the stored bytes and layout of each Linear layer and
    embedding table.
    `format` is the export format's name; `warnings` one line per layer a format wrote other than the plan says
    (none for this format, which holds every plan). `coded_bytes`: with `entropy`, the tensors' bytes as stored
    (entropy-coded), else None; `tensor_bytes` is always the uncoded packed size."""

    out_dir: str
    files: list[str]
    tensor_bytes: int
    predicted_bytes: int
    file_bytes: int
    per_layer: dict[str, int] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    format: str = "autocompress"
    warnings: list[str] = field(default_factory=list)
    coded_bytes: int | None = None

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


def mark_config(path: str) -> None:
    """Mark the config.json at `path` as an autocompress packed export (module docstring)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    data[ORIGINAL_TYPE_KEY] = data.get(ORIGINAL_TYPE_KEY, data["model_type"])
    data["model_type"] = MARKER
    _write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def unmark_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config.json's contents with the original model_type back (unchanged when it is not marked)."""
    data = dict(data)
    if data.get("model_type") == MARKER:
        data["model_type"] = data.pop(ORIGINAL_TYPE_KEY)
    data.pop(ORIGINAL_TYPE_KEY, None)
    return data


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def save_compressed(model: nn.Module, plan: CompressionPlan, info: ModelInfo, out_dir: str, tokenizer: Any = None,
                    base_config: Any = None, card: str | None = None, strict: bool = False,
                    entropy: str | None = None) -> ExportReport:
    """Write `model` (what `apply_plan(model, plan, info=info)` returned; `info` is the ORIGINAL model's
    inventory) to `out_dir` in the packed format (see the module docstring) and return the `ExportReport`.
    `base_config` (a transformers config) replaces `model.config` in config.json. Raises `UserError` when
    `out_dir` is a file or the model has no config, ValueError when the model does not realize the plan. `strict`
    changes nothing here: this format holds every plan. `entropy` ("zstd", "lzma", "zlib" or None) codes the
    packed tensors losslessly (`entropy.py`); `load_compressed` decodes them bit-exactly."""
    from safetensors.torch import save_file

    check_coder(entropy)

    out_dir, config = writer_target(model, out_dir, base_config)
    sizes, dropped = plan_size(plan, info), plan.drop_blocks
    plan, info = reduced(plan, info)  # dropped blocks (autocompress.depth) are gone from the model: its own plan
    packed = pack_model(model, plan, info)
    os.makedirs(out_dir, exist_ok=True)
    stale = os.path.join(out_dir, "export.json")
    if os.path.exists(stale):
        os.remove(stale)  # the directory is not a complete export until export.json is written again
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "dtype": packed.dtype,
              "layers": json.dumps(packed.layers, sort_keys=True), "tied": json.dumps(packed.tied, sort_keys=True)}
    weights = os.path.join(out_dir, "model.safetensors")
    stored = packed.tensors
    if entropy is not None:
        stored, coded = encode(packed.tensors, entropy)
        header["coded"] = json.dumps(coded, sort_keys=True)
    save_file(stored, weights + ".tmp", metadata=header)
    os.replace(weights + ".tmp", weights)
    write_side_files(out_dir, model, config, tokenizer)
    mark_config(os.path.join(out_dir, "config.json"))
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
    if entropy is not None:
        report.update(entropy=entropy, coded_bytes=coded_bytes(stored), size_coded_mb=coded_bytes(stored) / 1e6)
    if plan.kv_cache is not None:  # not stored: the cache is quantized at run time (load_compressed restores it)
        report["kv_cache"] = plan.kv_cache.to_dict()
    if plan.vocab is not None:  # the kept rows are stored, and the id map (vocab/export.py)
        report["vocab"] = plan.vocab.to_dict()
    if dropped:  # plan.json holds the plan of the smaller model (renumbered blocks); the original indices
        report["drop_blocks"] = list(dropped)
    _write_text(os.path.join(out_dir, "README.md"), card if card is not None else _card(model, plan, info, report))
    _write_text(stale, json.dumps(report, indent=2) + "\n")
    return ExportReport(out_dir=str(out_dir), files=sorted(os.listdir(out_dir)), tensor_bytes=packed.tensor_bytes,
                        predicted_bytes=sizes.total_bytes, file_bytes=report["file_bytes"],
                        per_layer={n: r["bytes"] for n, r in packed.layers.items()},
                        formats={n: r["layout"] for n, r in packed.layers.items()}, differences=diffs,
                        coded_bytes=report.get("coded_bytes"))


def _load_dequantized(path: str, task: str) -> nn.Module:
    from autocompress.export.load import load_compressed

    return load_compressed(path).model


ENGINES = """- **autocompress**: `autocompress.export.load_compressed(path)` (`kernels=True` runs int8 / int4 CPU
  kernels where they exist). The weights are packed in autocompress's own layout: transformers' `from_pretrained`,
  vLLM and llama.cpp do not read this directory (config.json names `autocompress.export.load_compressed`, so
  they fail with that message instead of loading it wrongly); export with `--format compressed-tensors`
  or `--format gguf` for them."""

FORMAT = ExportFormat("autocompress", save_compressed, _load_dequantized, ENGINES,
                      loaded_by="`autocompress.export.load_compressed` (dequantized)")
