"""The `gguf` export format: one GGUF file for llama.cpp, Ollama and LM Studio (`export --format gguf`).

The writing is `gguf_writer.write_gguf` (ggml block types that hold each layer's plan exactly, llama metadata,
the tokenizer and chat template in the file); this module is its entry in the format registry
(`formats.MODULES`). The re-measurement loads the file with transformers' own GGUF loader (weights dequantized
to float32). A layer GGUF holds exactly but larger than planned is one warning line (`ExportReport.warnings`);
`--strict` refuses it, and a plan GGUF cannot hold at all is refused (exit 2) before anything is written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autocompress.export.formats import ExportFormat
from autocompress.export.gguf_writer import FORMAT_NAME, GGUF_FILE, load_gguf, write_gguf
from autocompress.kvcache.export import gguf_note
from autocompress.vocab.export import check_format

ENGINES = f"""- **llama.cpp**: `llama-cli -m PATH/{GGUF_FILE}` or `llama-server -m PATH/{GGUF_FILE}` (ggml types Q4_0,
  Q4_1, Q5_0, Q5_1, Q8_0 and F32 are native to llama.cpp, with CPU and GPU kernels).
- **Ollama**: a Modelfile with `FROM PATH/{GGUF_FILE}`, then `ollama create NAME -f Modelfile`.
- **LM Studio**: import the file (`lms import`).
- **transformers**: `from_pretrained(PATH, gguf_file="{GGUF_FILE}")` with the `gguf` package; the weights are
  dequantized to float32 on load (a check of the file, not a way to serve it small).
- **vLLM** reads GGUF only experimentally; export with `--format compressed-tensors` for it."""


def write(model: Any, plan: Any, info: Any, out_dir: Any, tokenizer: Any = None, base_config: Any = None,
          card: str | None = None, strict: bool = False):
    """`gguf_writer.write_gguf`, with its "larger than planned" lines as the report's warnings. A pruned
    vocabulary is refused (`UserError`: vocab/export.py)."""
    check_format("GGUF", plan)
    report = write_gguf(model, plan, info, out_dir, tokenizer=tokenizer, base_config=base_config, card=card,
                        strict=strict)
    notes = [gguf_note(plan.kv_cache)] if plan.kv_cache is not None else []  # a run-time setting in llama.cpp
    return dataclasses.replace(report, format=FORMAT_NAME, warnings=list(report.differences) + notes)


def load(out_dir: str, task: str):
    """The written file as transformers' GGUF loader reads it (eval mode, float32)."""
    return load_gguf(out_dir)[0]


def usage(out_dir: str, task: str) -> str:
    return ("from transformers import AutoModelForCausalLM, AutoTokenizer  # pip install gguf\n"
            f"model = AutoModelForCausalLM.from_pretrained({out_dir!r}, gguf_file={GGUF_FILE!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({out_dir!r}, gguf_file={GGUF_FILE!r})")


FORMAT = ExportFormat(FORMAT_NAME, write, load, ENGINES, loaded_by="transformers' GGUF loader (`gguf_file=`)",
                      usage=usage, weights=("*.gguf",))
