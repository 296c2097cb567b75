"""The model side of a GGUF file: which architectures the writer maps, their metadata, tensor names and layout.

An architecture is mapped when three things agree on it: the `gguf` package's tensor map (Hugging Face module
names -> GGUF tensor names, `gguf.get_tensor_name_map`), llama.cpp's metadata keys for it, and what
transformers' GGUF loader reads back (its config mapping and tensor processors). Mapped today:

  llama (LlamaForCausalLM: Llama 1-3 shapes, SmolLM, TinyLlama, ...) as GGUF architecture "llama": keys
    block_count, context_length, embedding_length, feed_forward_length, attention.head_count,
    attention.head_count_kv, attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count
    (= head_dim; plus attention.key_length/value_length when head_dim is not hidden / heads), vocab_size.
    The rows of attn_q and attn_k are permuted as llama.cpp's converter does (its rotary embedding pairs
    dimensions i and i + head_dim / 2 the other way round: per head, rows [h0 h1 ... | h0' h1' ...] become
    interleaved pairs); transformers' loader undoes it. A row permutation keeps every block of 32 inputs
    intact, so it applies to the quantized rows and their scales alike. No output.weight when the LM head
    is tied to the token embedding (llama.cpp and transformers then reuse token_embd).

`check_model` refuses, with a one-line `UserError` and before anything is written, what the file could not
say: another architecture, a task other than causal-lm, biases (attention_bias, mlp_bias), an activation
other than silu, rope scaling (rope_type other than default), and any tensor without a GGUF name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from autocompress.errors import UserError

FIX = "export with --format autocompress, or search a llama model"


@dataclass(frozen=True)
class Arch:
    """A mapped architecture: its GGUF name and whether q/k rows take llama.cpp's rotary permutation."""

    gguf: str
    permute_qk: bool


ARCHS = {"llama": Arch("llama", permute_qk=True)}


def _rope(config: Any) -> tuple[float, str]:
    """(rope theta, rope type) from a transformers config (`rope_parameters`, or the older attributes)."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), str(kind)


def head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def check_model(config: Any, task: str) -> Arch:
    """The `Arch` of a model with this transformers config and task; `UserError` for what GGUF cannot say."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise UserError(f"GGUF export: {model_type!r} models are not mapped to GGUF (mapped: "
                        f"{', '.join(ARCHS)}); {FIX}")
    if task != "causal-lm":
        raise UserError(f"GGUF export: a {model_type} model of task {task!r}; GGUF holds causal LMs "
                        "(ForCausalLM); export it with --format autocompress")
    checks = [("attention_bias", bool(getattr(config, "attention_bias", False)), "attention biases"),
              ("mlp_bias", bool(getattr(config, "mlp_bias", False)), "MLP biases"),
              ("hidden_act", getattr(config, "hidden_act", "silu") != "silu", "an activation other than silu"),
              ("rope", _rope(config)[1] != "default", f"rope scaling {_rope(config)[1]!r}")]
    for key, bad, what in checks:
        if bad:
            raise UserError(f"GGUF export: this {model_type} model has {what} ({key} in its config), which the "
                            f"llama GGUF metadata transformers reads cannot say; {FIX}")
    return ARCHS[model_type]


def write_metadata(writer: Any, config: Any, arch: Arch, vocab_size: int) -> None:
    """The architecture's keys (module docstring) on a `gguf.GGUFWriter`."""
    theta, _ = _rope(config)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) * heads != int(config.hidden_size):
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_vocab_size(vocab_size)


def tensor_names(names: list[str], arch: Arch, blocks: int) -> dict[str, str]:
    """Hugging Face parameter name -> GGUF tensor name for every name in `names`; `UserError` for one the
    gguf package's tensor map does not know."""
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf)
    mapping = gguf.get_tensor_name_map(arch_id, blocks)
    out = {}
    for name in names:
        mapped = mapping.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise UserError(f"GGUF export: the tensor {name!r} has no GGUF name for architecture {arch.gguf} "
                            f"(the gguf package's tensor map); {FIX}")
        out[name] = mapped
    return out


def permute_rows(t: torch.Tensor, gguf_name: str, config: Any, arch: Arch) -> torch.Tensor:
    """`t` [rows, ...] (a weight, or its per-block scales) with attn_q / attn_k rows in llama.cpp's rotary
    order; every other tensor unchanged."""
    if not arch.permute_qk or not gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
        return t
    heads = int(config.num_attention_heads)
    if gguf_name.endswith("attn_k.weight"):
        heads = int(getattr(config, "num_key_value_heads", None) or heads)
    rows = t.shape[0]
    return t.reshape(heads, 2, rows // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
