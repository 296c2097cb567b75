"""`write_gguf`: a compressed model as one GGUF file, the format of llama.cpp (and Ollama, LM Studio), which
transformers also loads (`from_pretrained(dir, gguf_file="model.gguf")`).

Plugging in: the export format registry takes this module's `write_gguf` as the writer of format "gguf"
  write(model, plan, info, out_dir, tokenizer, base_config, card) -> ExportReport
(keyword `strict` for `--strict`); `check_gguf_export(plan, info, config, tokenizer, strict)` refuses early,
before the trial is rebuilt, everything `write_gguf` would refuse; `load_gguf(out_dir)` reads the file back
through transformers' own GGUF loader (model, tokenizer) for the export's re-measurement; `load_section(path)`
gives a model card's lines on what each engine (llama.cpp, Ollama, LM Studio, transformers) needs to load it.

The directory: model.gguf (every tensor, the architecture's metadata, the tokenizer and chat template),
plan.json, README.md (`card`, or a minimal one), generation_config.json (when the model has one), export.json
(format, per-tensor ggml type and bytes, predicted vs written bytes; written last, so a directory without it
is incomplete). model.gguf is written as model.gguf.tmp and renamed when complete.

Which ggml type holds each weight (export/gguf_blocks.py): a `gguf_type` layer its own type, exactly (what a
search with `target.format: gguf` plans); a layer on the integer grid the smallest Q*_0 type holding its
integers exactly; every other weight dense (F32 for a float32 model), norms F32. What GGUF cannot hold:
  - refused always (`UserError`, exit 2, nothing written), because the file would be another model than the
    one the search scored: int8 activations (act_bits, smooth), low-rank factor pairs, structured pruning
    (GGUF has one head count and FFN width for every block), groups that are not whole blocks of 32
    inputs (group_size 16, 24, 48, ...), 8-bit asymmetric integers, and what `gguf_arch.check_model` and
    `gguf_tokenizer` refuse (architecture, config, tokenizer);
  - written exactly but larger than the plan (a one-line warning per layer, in the report's `differences`),
    or refused with `strict`: integer grids other than symmetric 4/5/8-bit groups of 32 (per-channel and
    larger groups get a scale per 32, 2-3 bits take Q4_0, 6-7 bits and asymmetric grids Q5_0 / Q8_0), and
    unstructured or N:M sparsity (stored dense: the zeros stay exact, the saving is lost).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.depth.reduce import reduced
from autocompress.evaluators.size import plan_size
from autocompress.export.gguf_arch import Arch, check_model, permute_rows, tensor_names, write_metadata
from autocompress.export.gguf_blocks import dense_tensor, int_grid_type, quantized_tensor, whole_blocks
from autocompress.export.gguf_tokenizer import check_tokenizer, write_tokenizer
from autocompress.export.formats import writer_target
from autocompress.export.save import ExportReport
from autocompress.models import ModelInfo
from autocompress.modules import weight_matrix
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies.quantize import GRID_ATTR

FORMAT_NAME = "gguf"
GGUF_FILE = "model.gguf"


def _why_not(entry: LayerPlan) -> tuple[str | None, str | None]:
    """(why GGUF cannot hold `entry` at all, why only larger than planned), each None when it does not apply."""
    if entry.pattern == "structured":
        return "structured pruning (GGUF has one head count and FFN width for every block)", None
    if entry.rank is not None:
        return "a low-rank factor pair (GGUF has no tensor names for one)", None
    if entry.act_bits is not None:
        return "int8 activations (act_bits; GGUF stores weights, llama.cpp runs its own activations)", None
    if entry.gguf_type is not None:
        return None, None
    if entry.bits is not None and entry.quant_method == "kmeans":
        return "a codebook (quant_method kmeans; ggml's types hold uniform grids)", None
    if entry.bits is not None and not whole_blocks(entry):
        return f"group_size {entry.group_size} (GGUF blocks are 32 inputs)", None
    if entry.bits is not None and int_grid_type(entry) is None:
        return "8-bit asymmetric integers (no ggml type holds them)", None
    pattern = entry.pattern if entry.n_m else f"{entry.sparsity:.0%}"
    sparse = f"{pattern} sparsity stored dense" if entry.prunes else None
    if entry.bits is None:
        return None, sparse
    qtype = int_grid_type(entry)
    as_planned = entry.symmetric and entry.bits in (4, 5, 8) and entry.group_size == 32
    grid = None if as_planned else (f"{entry.bits}-bit {'sym' if entry.symmetric else 'asym'} groups of "
                                    f"{entry.group_size or 'one row'} written as {qtype}")
    return None, "; ".join(x for x in (grid, sparse) if x) or None


def gguf_plan_problems(plan: CompressionPlan, info: ModelInfo) -> tuple[list[str], list[str]]:
    """(layers GGUF cannot hold, layers it holds exactly but larger than planned), one line each."""
    refused, larger = [], []
    for name, entry in plan.layers.items():
        no, big = _why_not(entry)
        if no:
            refused.append(f"{name}: {no}")
        elif big:
            larger.append(f"{name}: {big}")
    return refused, larger


def check_gguf_export(plan: CompressionPlan, info: ModelInfo, config: Any, tokenizer: Any,
                      strict: bool = False) -> Arch:
    """Refuse (`UserError`, one line) a GGUF export of this plan, model config and tokenizer that
    `write_gguf` could not write (module docstring; with `strict` also what would be larger than planned).
    Reads the plan, config and tokenizer only: call it before rebuilding the model."""
    arch = check_model(config, info.task)
    refused, larger = gguf_plan_problems(plan, info)
    if refused:
        raise UserError(f"GGUF export: layer {refused[0]} cannot be held by GGUF ({len(refused)} such "
                        "layer(s)); export with --format autocompress, or search with target.format: gguf")
    if strict and larger:
        raise UserError(f"GGUF export (strict): layer {larger[0]} ({len(larger)} such layer(s)), larger than "
                        "planned; drop --strict to write them, or search with target.format: gguf")
    check_tokenizer(tokenizer)
    return arch


def _grid_owner(model: nn.Module, info: ModelInfo, module_name: str) -> str:
    """The plan key whose grid a weight carries: a table tied to a Linear carries the Linear's."""
    emb = info.embeddings.get(module_name)
    return emb.tied_to if emb is not None and emb.tied_to is not None else module_name


def _tensors(model: nn.Module, plan: CompressionPlan, info: ModelInfo, config: Any,
             arch: Arch) -> list[tuple[str, str, np.ndarray, str]]:
    """(HF name, GGUF name, data, ggml type) of every tensor the file holds."""
    state = model.state_dict()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    skip = {f"{n}.weight" for n, m in model.named_modules() if tied and m is head}  # llama.cpp reuses token_embd
    names = [n for n in state if n not in skip]
    gguf_names = tensor_names(names, arch, int(config.num_hidden_layers))
    out = []
    for name in names:
        module_name, leaf = name.rsplit(".", 1)
        module, gname = model.get_submodule(module_name), gguf_names[name]
        owner = _grid_owner(model, info, module_name)
        entry = plan.layers.get(owner)
        if leaf == "weight" and entry is not None and entry.bits is not None:
            grid = getattr(model.get_submodule(owner), GRID_ATTR, None)
            if grid is None:
                raise ValueError(f"{owner}: the plan quantizes it but it has no recorded grid; export the "
                                 "model that apply_plan returned")
            rows = {f: permute_rows(getattr(grid, f), gname, config, arch) for f in ("scale", "zero", "minimum")
                    if getattr(grid, f) is not None}
            w = permute_rows(weight_matrix(module), gname, config, arch)
            try:
                qtype, data, _ = quantized_tensor(w, replace(grid, **rows), entry)
            except ValueError as exc:
                raise ValueError(f"{owner}: {exc}") from None
        else:
            qtype, data = dense_tensor(permute_rows(state[name], gname, config, arch))
        out.append((name, gname, data, qtype))
    return out


def _file_type(types: list[str]) -> int:
    import gguf

    quantized = Counter(t for t in types if t.startswith("Q"))
    if quantized:
        return int(gguf.LlamaFileType[f"MOSTLY_{quantized.most_common(1)[0][0]}"])
    two_d = Counter(types)
    return int(gguf.LlamaFileType.MOSTLY_BF16 if two_d["BF16"] else gguf.LlamaFileType.MOSTLY_F16
               if two_d["F16"] else gguf.LlamaFileType.ALL_F32)


def _write_file(path: str, config: Any, arch: Arch, tensors: list, tokenizer: Any, vocab_size: int) -> dict:
    import gguf

    writer = gguf.GGUFWriter(path + ".tmp", arch.gguf)
    try:
        writer.add_name(os.path.basename(str(getattr(config, "_name_or_path", "") or arch.gguf)) or arch.gguf)
        write_metadata(writer, config, arch, vocab_size)
        writer.add_file_type(_file_type([t for _, _, _, t in tensors]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        summary = write_tokenizer(writer, tokenizer, vocab_size)
        for _, gname, data, qtype in tensors:
            kind = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(gname, data, raw_dtype=None if qtype in ("F32", "F16") else kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(path + ".tmp", path)
    return summary


def write_gguf(model: nn.Module, plan: CompressionPlan, info: ModelInfo, out_dir: str, tokenizer: Any = None,
               base_config: Any = None, card: str | None = None, strict: bool = False) -> ExportReport:
    """Write `model` (what `apply_plan(model, plan, info=info)` returned; `info` the original model's
    inventory) to `out_dir` as the directory of the module docstring and return its `ExportReport` (`formats`:
    each layer's ggml type). `UserError` (before anything is written) for what GGUF cannot hold;
    ValueError when the model does not realize the plan."""
    out_dir, config = writer_target(model, out_dir, base_config)
    plan, info = reduced(plan, info)  # dropped blocks (autocompress.depth) are gone from the model
    arch = check_gguf_export(plan, info, config, tokenizer, strict)
    tensors = _tensors(model, plan, info, config, arch)
    _, larger = gguf_plan_problems(plan, info)
    for line in larger:
        warnings.warn(f"GGUF export: {line} (exact, larger than planned)", stacklevel=2)
    os.makedirs(out_dir, exist_ok=True)
    stale = os.path.join(out_dir, "export.json")
    if os.path.exists(stale):
        os.remove(stale)
    path = os.path.join(out_dir, GGUF_FILE)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    summary = _write_file(path, config, arch, tensors, tokenizer, vocab)
    plan.save(os.path.join(out_dir, "plan.json"))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    layers = {n.rsplit(".", 1)[0]: (t, int(d.nbytes)) for n, _, d, t in tensors if d.ndim == 2}
    tensor_bytes = sum(int(d.nbytes) for _, _, d, _ in tensors)
    predicted = plan_size(plan, info).total_bytes
    report = {"format": FORMAT_NAME, "file": GGUF_FILE, "architecture": arch.gguf, "tokenizer": summary,
              "tensor_bytes": tensor_bytes, "file_bytes": os.path.getsize(path), "predicted_bytes": predicted,
              "differences": larger, "layers": {k: {"type": t, "bytes": b} for k, (t, b) in layers.items()}}
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(card if card is not None else _card(info, plan, report))
    with open(stale, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(report, indent=2) + "\n")
    return ExportReport(out_dir=out_dir, files=sorted(os.listdir(out_dir)), tensor_bytes=tensor_bytes,
                        predicted_bytes=predicted, file_bytes=report["file_bytes"],
                        per_layer={k: b for k, (_, b) in layers.items()},
                        formats={k: t for k, (t, _) in layers.items()}, differences=larger)


def _card(info: ModelInfo, plan: CompressionPlan, report: dict[str, Any]) -> str:
    types = Counter(v["type"] for v in report["layers"].values())
    return "\n".join([f"# {info.model_type} compressed by autocompress, as GGUF", "",
                      f"Plan: {plan.summary()}. Tensors: {', '.join(f'{t} x{n}' for t, n in sorted(types.items()))}; "
                      f"{report['file_bytes'] / 1e6:.2f} MB.", "", *load_section(".")])


def load_section(path: str, file: str = GGUF_FILE) -> list[str]:
    """A model card's "Load it" lines for a GGUF export at `path`: what each engine needs to load it."""
    return [
        "## Load it", "",
        f"One file, `{file}`, holds the weights (ggml types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F32: all native to "
        "llama.cpp, with CPU and GPU kernels), the architecture, the tokenizer and the chat template.", "",
        f"- llama.cpp: `llama-cli -m {path}/{file}` or `llama-server -m {path}/{file}`",
        f"- Ollama: a Modelfile with `FROM {path}/{file}`, then `ollama create NAME -f Modelfile`",
        "- LM Studio: import the file (`lms import`)",
        "- transformers (with the `gguf` package; weights dequantized to float32 on load):", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = AutoModelForCausalLM.from_pretrained({path!r}, gguf_file={file!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({path!r}, gguf_file={file!r})", "```", ""]


def load_gguf(out_dir: str, file: str = GGUF_FILE) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) read from `out_dir/file` by transformers' own GGUF loader (weights
    dequantized to float32, q/k rows permuted back)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out_dir, gguf_file=file, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(out_dir, gguf_file=file)
