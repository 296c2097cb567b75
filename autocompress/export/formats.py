"""Export formats: a small registry from a format name to the code that writes it and loads it back.

Every format is one `ExportFormat`:
  write(model, plan, info, out_dir, tokenizer=None, base_config=None, card=None, strict=False) -> ExportReport
      `model` is what `apply_plan(model, plan, info=info)` returned (`info`: the ORIGINAL model's inventory);
      writes the complete directory `out_dir` (weights, config.json, tokenizer files with the chat template,
      generation_config.json for a model that generates, the model card `card`); raises `UserError` for a
      plan the format cannot hold (always, or only under `strict`, as the format documents) before anything
      is written, ValueError when the model does not realize the plan.
  load(out_dir, task) -> nn.Module
      the written directory loaded the way the format's engine loads it (eval mode, CPU), for re-measuring.
  engines: markdown for the model card: which engines load the directory and what each one needs.
  loaded_by: how `load` loads it, in words for the card ("transformers' `from_pretrained`").
  usage(out_dir, task) -> str: Python code that loads the directory, for the card (None: none shown).
  weights: glob patterns of the weight files (their bytes are the export's file size).

A format lives in its own module, which defines `FORMAT = ExportFormat(...)`; `MODULES` maps each format name
to that module, imported on first use. Adding a format is one line in `MODULES`. A listed format whose
module is not there yet answers "not available yet" (`UserError`), like an unknown name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

from autocompress.errors import UserError

DEFAULT_FORMAT = "autocompress"
MODULES = {
    "autocompress": "autocompress.export.save",
    "compressed-tensors": "autocompress.export.compressed_tensors",
    "gguf": "autocompress.export.gguf",
}


@dataclass(frozen=True)
class ExportFormat:
    """One export format (module docstring)."""

    name: str
    write: Callable[..., Any]
    load: Callable[[str, str], Any]
    engines: str
    loaded_by: str = "its engine"
    usage: Callable[[str, str], str] | None = None
    weights: tuple[str, ...] = ("*.safetensors",)


def format_names() -> list[str]:
    return list(MODULES)


def get_format(name: str) -> ExportFormat:
    """The `ExportFormat` named `name`; `UserError` (one line naming the valid formats) for an unknown name or
    a format whose writer is not installed."""
    valid = ", ".join(MODULES)
    if name not in MODULES:
        raise UserError(f"--format {name!r} is unknown; use one of: {valid}")
    try:
        module = importlib.import_module(MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name != MODULES[name]:
            raise
        ready = ", ".join(n for n in MODULES if n != name and _present(MODULES[n]))
        raise UserError(f"--format {name!r} is not available yet; use one of: {ready}") from None
    fmt = getattr(module, "FORMAT", None)
    if not isinstance(fmt, ExportFormat):
        raise UserError(f"--format {name!r} is not available yet; use one of: {valid}")
    return fmt


def _present(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def weight_bytes(out_dir: str, fmt: ExportFormat) -> int:
    """Bytes of `fmt`'s weight files in `out_dir`."""
    from pathlib import Path

    return sum(p.stat().st_size for pattern in fmt.weights for p in Path(out_dir).glob(pattern))


def writer_target(model: Any, out_dir: Any, base_config: Any = None) -> tuple[str, Any]:
    """(out_dir as a str, the transformers config to write) for a format's `write`: `base_config`, else
    `model.config`. `UserError` when there is no config or `out_dir` is a file (before anything is written)."""
    out_dir = os.fspath(out_dir)
    config = base_config if base_config is not None else getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise UserError("export: the model has no transformers config; pass base_config=<the original config>")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"export directory {out_dir!r} is a file; give a new or existing directory")
    return out_dir, config


def write_side_files(out_dir: str, model: Any, config: Any, tokenizer: Any = None) -> list[str]:
    """Write what every format's directory has beside the weights: config.json (`config`), the tokenizer files
    (chat template included) and, for a model that generates, generation_config.json. Returns the names written."""
    os.makedirs(out_dir, exist_ok=True)
    config.save_pretrained(out_dir)
    written = ["config.json"]
    if tokenizer is not None:
        written += [os.path.basename(p) for p in tokenizer.save_pretrained(out_dir)]
    generation = getattr(model, "generation_config", None)
    can_generate = getattr(model, "can_generate", lambda: False)
    if generation is not None and can_generate():
        generation.save_pretrained(out_dir)
        written.append("generation_config.json")
    return written
