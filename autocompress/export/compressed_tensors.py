"""The `compressed-tensors` export format: the Hugging Face layout that llm-compressor writes, which
transformers (`from_pretrained`, with the `compressed-tensors` package) and vLLM load.

The directory:
  model.safetensors  every tensor under its state_dict name; a quantized layer's weight replaced by the
                     compressed-tensors package's own compression of it: `weight_packed` (int32, the integers
                     packed densely at their bit width), `weight_scale`, `weight_shape` and, when asymmetric,
                     `weight_zero_point` (format pack-quantized); a layer with int8 activations (W8A8) keeps its
                     integers as an int8 `weight` with `weight_scale` (format int-quantized, what vLLM's int8
                     kernels read). Everything the plan leaves dense, and what the format cannot hold
                     compactly (`ct_layers.py`), in the model's dtype.
  config.json        the original config plus `quantization_config` (quant_method compressed-tensors, status
                     compressed; one config group per distinct scheme (bits, group size, symmetry, int8
                     activations) whose `targets` are the exact layer names; `format` the groups' common format,
                     or mixed-precision; `ignore` the Linear layers left dense), written by the package's
                     `ModelCompressor.update_config`
  tokenizer files, generation_config.json, plan.json, README.md (the model card)

Exactness: the search's grid is value = (q - zero) * scale with fp16-exact scales (policies/quantize.py);
compressed-tensors' is value = (q' - zero') * scale with q' and zero' in [-2^(b-1), 2^(b-1)-1]. The writer
stores q' = q - 2^(b-1) and zero' = zero - 2^(b-1) when asymmetric (q' = q, no zero point, when symmetric: the
search's symmetric range is a subset of the package's), and the scales in the model's dtype, which holds them
exactly in float32 and float16. Each layer is compressed from its dequantized float32 weight, then
decompressed again by the package and compared with the searched weight: equal bit for bit, or ValueError.
Dynamic int8 activations differ slightly: the search scales each token by absmax / 127 into [-127, 127];
the package's fake quantization (transformers' path) by absmax / 127.5 into [-128, 127].
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from autocompress.depth.reduce import reduced
from autocompress.evaluators.size import plan_size
from autocompress.export.ct_layers import Decisions, Scheme, decide
from autocompress.export.formats import ExportFormat, write_side_files, writer_target
from autocompress.export.matrix import _check_grid
from autocompress.export.packed import tied_aliases
from autocompress.export.save import ExportReport
from autocompress.models import ModelInfo
from autocompress.modules import LowRankLinear, weight_matrix
from autocompress.plan import CompressionPlan
from autocompress.policies.quantize import GRID_ATTR, dequantize, quantize_int

NAME = "compressed-tensors"


def ct_scheme(s: Scheme, targets: list[str]) -> Any:
    """The compressed-tensors `QuantizationScheme` of `s` for the layers `targets`, with the format the
    package itself infers for it (`infer_module_format`: int-quantized with int8 activations, pack-quantized
    for weights alone, dense for activations alone)."""
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = None if s.bits is None else QuantizationArgs(
        num_bits=s.bits, type="int", symmetric=s.symmetric, strategy="group" if s.group_size else "channel",
        group_size=s.group_size)
    acts = None if s.act_bits is None else QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token",
                                                            dynamic=True)
    scheme = QuantizationScheme(targets=targets, weights=weights, input_activations=acts)
    scheme.format = infer_module_format(nn.Linear, scheme)
    return scheme


def quantization_config(decisions: Decisions) -> Any:
    """The package's `QuantizationConfig` for `decisions`, or None when no layer has a scheme."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    by_scheme: dict[Scheme, list[str]] = {}
    for name, s in decisions.schemes.items():
        by_scheme.setdefault(s, []).append(name)
    if not by_scheme:
        return None
    groups = {f"group_{i}": ct_scheme(s, names) for i, (s, names) in enumerate(by_scheme.items())}
    formats = {str(getattr(g.format, "value", g.format)) for g in groups.values()}
    return QuantizationConfig(config_groups=groups, format=formats.pop() if len(formats) == 1 else "mixed-precision",
                              ignore=list(decisions.dense), quantization_status=QuantizationStatus.COMPRESSED)


def dense_state(model: nn.Module, info: ModelInfo) -> dict[str, torch.Tensor]:
    """The model's state_dict in the original architecture's names: a low-rank pair as the dense product of its
    factors (transposed back for a GPT-2 Conv1D), a tied weight once under its embedding table's name."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, LowRankLinear):
            w = (module.up.weight.double() @ module.down.weight.double()).to(module.up.weight.dtype)
            if info.layers[name].module_class == "Conv1D":
                w = w.t()
            for key in (f"{name}.down.weight", f"{name}.up.weight"):
                state.pop(key)
            state[f"{name}.weight"] = w.contiguous()
            if f"{name}.up.bias" in state:
                state[f"{name}.bias"] = state.pop(f"{name}.up.bias")
    for alias in tied_aliases(model, {f"{t}.weight" for t in info.embeddings}):
        state.pop(alias, None)
    return state


def compress_layer(name: str, module: nn.Module, s: Scheme, scheme: Any, scale_dtype: torch.dtype,
                   entry: Any) -> dict[str, torch.Tensor]:
    """The compressed tensors (local names) of one quantized layer, by the package's compressor; ValueError
    unless the package decompresses them to the searched weight bit for bit."""
    from compressed_tensors.compressors import BaseCompressor

    w = weight_matrix(module).detach().cpu()
    grid = _check_grid(getattr(module, GRID_ATTR, None), entry, tuple(w.shape), f"layer {name!r}")
    q = quantize_int(w, grid.scale, grid.zero, s.bits, grid.group_size, s.symmetric)
    values = dequantize(q, grid.scale, grid.zero, grid.group_size)
    if not torch.equal(values.to(w.dtype), w):
        raise ValueError(f"layer {name!r}: the weights are not on the recorded grid (changed after quantization?)")
    parts = {"weight": values, "weight_scale": grid.scale.to(scale_dtype)}
    if not s.symmetric:
        parts["weight_zero_point"] = (grid.zero - 2 ** (s.bits - 1)).to(torch.int8)
    compressor = BaseCompressor.get_value_from_registry(str(getattr(scheme.format, "value", scheme.format)))
    out = compressor.compress(parts, scheme)
    back = compressor.decompress(out, scheme)["weight"].to(w.dtype)
    if not torch.equal(back, w):
        raise ValueError(f"layer {name!r}: compressed-tensors does not give back the searched weight "
                         f"(max |diff| {float((back.float() - w.float()).abs().max()):.3g})")
    return {k: v.contiguous() for k, v in out.items()}


def save_compressed_tensors(model: nn.Module, plan: CompressionPlan, info: ModelInfo, out_dir: str,
                            tokenizer: Any = None, base_config: Any = None, card: str | None = None,
                            strict: bool = False) -> ExportReport:
    """Write `model` (what `apply_plan(model, plan, info=info)` returned; `info` the ORIGINAL model's inventory)
    to `out_dir` in the compressed-tensors format (module docstring). The `ExportFormat.write` contract
    (formats.py): `UserError` for a plan the format cannot hold (`ct_layers.decide`; under `strict` also for
    every layer it would write dense or without its sparse saving) before anything is written."""
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import save_file

    out_dir, config = writer_target(model, out_dir, base_config)
    plan, info = reduced(plan, info)  # dropped blocks (autocompress.depth) are gone from the model
    decisions = decide(model, plan, info, strict)
    qconfig = quantization_config(decisions)
    dtype = next(model.parameters()).dtype
    scale_dtype = dtype if dtype in (torch.float32, torch.float16) else torch.float32
    tensors = dense_state(model, info)
    per_layer, formats = {}, {name: "dense" for name in decisions.dense}
    schemes = {n: g for g in (qconfig.config_groups.values() if qconfig else []) for n in g.targets}
    for name, s in decisions.schemes.items():
        scheme = schemes[name]
        formats[name] = str(getattr(scheme.format, "value", scheme.format))
        if s.bits is None:
            continue
        parts = compress_layer(name, model.get_submodule(name), s, scheme, scale_dtype, plan.layers[name])
        tensors.pop(f"{name}.weight")
        tensors.update({f"{name}.{k}": v for k, v in parts.items()})
        per_layer[name] = sum(v.numel() * v.element_size() for v in parts.values())
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, "model.safetensors")
    save_file(tensors, weights + ".tmp", metadata={"format": "pt"})
    os.replace(weights + ".tmp", weights)
    write_side_files(out_dir, model, config, tokenizer)
    if qconfig is not None:
        ModelCompressor(quantization_config=qconfig).update_config(out_dir)
    plan.save(os.path.join(out_dir, "plan.json"))
    notes = decisions.warnings + decisions.notes
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(card if card is not None else _card(info, plan, notes))
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return ExportReport(out_dir=out_dir, files=sorted(os.listdir(out_dir)), tensor_bytes=tensor_bytes,
                        predicted_bytes=plan_size(plan, info).total_bytes, file_bytes=os.path.getsize(weights),
                        per_layer=per_layer, formats=formats, format=NAME, warnings=notes)


def _card(info: ModelInfo, plan: CompressionPlan, notes: list[str]) -> str:
    lines = [f"# {info.model_type} compressed by autocompress (compressed-tensors)", "",
             f"Plan: {plan.summary()}.", "", ENGINES, ""]
    return "\n".join(lines + ([f"- {n}" for n in notes] if notes else []) + [""])


def load_with_transformers(path: str, task: str) -> nn.Module:
    """The directory loaded as transformers loads it: the task's Auto class `from_pretrained` (no remote code)."""
    from autocompress.loading import _auto_class

    return _auto_class(task).from_pretrained(path, trust_remote_code=False).eval()


def quantization_section(path: str) -> dict[str, Any]:
    """config.json's quantization_config of a written directory ({} when there is none)."""
    with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
        return json.load(fh).get("quantization_config", {})


ENGINES = """- **transformers**: `AutoModelForCausalLM.from_pretrained(path)` (`AutoModel` for an encoder) with the
  `compressed-tensors` package installed (`pip install compressed-tensors`); the layers are dequantized on the
  first forward pass, so this saves disk and download, not memory or time.
- **vLLM**: `vllm serve path` (or `LLM(model=path)`) on a GPU. vLLM's weight-only kernels take 4- and 8-bit
  weights (Marlin / Machete, symmetric or with zero points, per channel or in groups such as 32, 64 and 128);
  other bit widths (2, 3, 5, 6, 7) load only where a newer kernel takes them. Its int8 W8A8 kernels take
  per-channel 8-bit weights with dynamic per-token activations. vLLM fuses q/k/v and gate/up into one layer
  and needs one scheme for each fused set.
- **llama.cpp / Ollama / LM Studio** do not read this format; export with `--format gguf`."""

def usage(out_dir: str, task: str) -> str:
    from autocompress.loading import _auto_class

    cls = _auto_class(task).__name__
    return (f"from transformers import {cls}, AutoTokenizer  # pip install compressed-tensors\n"
            f"model = {cls}.from_pretrained({out_dir!r})\ntokenizer = AutoTokenizer.from_pretrained({out_dir!r})")


FORMAT = ExportFormat(NAME, save_compressed_tensors, load_with_transformers, ENGINES,
                      loaded_by="transformers' `from_pretrained` (with the compressed-tensors package)", usage=usage)
