"""The tokenizer and chat template of a model as GGUF metadata (`tokenizer.*` keys, llama.cpp's names).

Read from the Hugging Face fast tokenizer's own description (`backend_tokenizer`, the tokenizer.json model):
  tokenizer.ggml.model       "gpt2" for byte-level BPE (a ByteLevel pre-tokenizer: GPT-2, SmolLM, Llama 3,
                             Qwen), "llama" for SentencePiece-style BPE (Metaspace / "▁" spaces, byte fallback:
                             Llama 1-2, Mistral, TinyLlama). Anything else (WordPiece, Unigram) is refused
                             with a `UserError`, before anything is written.
  tokenizer.ggml.pre         (gpt2) the split the tokenizer applies: "gpt-2" for ByteLevel's own regex,
                             "smollm" for single digits then ByteLevel, else the name transformers' GGUF reader
                             maps to the same Split regex (llama-bpe, qwen2, ...), else "default". It names
                             what the tokenizer at hand does, which may differ from the model's original file
                             (a tokenizer built from a GGUF by transformers keeps only the splits it knows).
  tokenizer.ggml.tokens      every id 0..vocab_size-1 in order; ids the tokenizer lacks (a vocabulary padded
                             to the embedding's rows) as "[PAD<id>]" of type UNUSED, as llama.cpp writes them.
  tokenizer.ggml.token_type  1 normal, 2 unknown, 3 control (special added tokens), 4 user-defined (other
                             added tokens), 5 unused, 6 byte (SentencePiece's <0xXX>).
  tokenizer.ggml.scores      (llama) minus the rank of the merge that makes the token, 0 for the rest.
  tokenizer.ggml.merges      the BPE merges, "left right", in rank order.
  bos / eos / unknown / padding token ids, add_bos_token / add_eos_token (whether encoding adds them, found
  by encoding a short text), add_space_prefix (llama), and tokenizer.chat_template.
transformers' GGUF loader rebuilds the tokenizer from exactly these keys (tests/export/test_gguf_writer.py
compares the token ids and the chat template).
"""

from __future__ import annotations

import json
from typing import Any

from autocompress.errors import UserError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_PROBE = "Hello world 123"


def _backend(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("GGUF export: the model's tokenizer is not a fast (tokenizers) tokenizer, so its "
                        "vocabulary cannot be written; export with --format autocompress")
    return json.loads(backend.to_str())


def _parts(node: Any) -> list[dict[str, Any]]:
    """A pre-tokenizer / normalizer node and the members of a Sequence, flattened."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        items = node.get("pretokenizers") or node.get("normalizers") or []
        return [p for item in items for p in _parts(item)]
    return [node]


def kind(data: dict[str, Any]) -> str:
    """"gpt2" or "llama" for a tokenizer.json `data`; `UserError` for any other tokenizer."""
    model = data.get("model") or {}
    pre = [p.get("type") for p in _parts(data.get("pre_tokenizer"))]
    norm = _parts(data.get("normalizer"))
    if model.get("type") == "BPE" and "ByteLevel" in pre:
        return "gpt2"
    metaspace = "Metaspace" in pre or any(n.get("type") == "Replace" and n.get("content") == "▁" for n in norm)
    if model.get("type") == "BPE" and metaspace:
        return "llama"
    raise UserError(f"GGUF export: the tokenizer is a {model.get('type', 'unknown')} tokenizer; GGUF export "
                    "writes byte-level BPE (gpt2) and SentencePiece BPE (llama) tokenizers; export with "
                    "--format autocompress")


def _pre(data: dict[str, Any]) -> str:
    parts = _parts(data.get("pre_tokenizer"))
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    split = next((p for p in parts if p.get("type") == "Split"), None)
    if split is not None:
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:
            GGUF_PRE_TOKENIZER_SPLITS = {}
        regex = (split.get("pattern") or {}).get("Regex")
        return next((name for name, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex), "default")
    return "default"


def _merges(model: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]


def _adds(tokenizer: Any, token_id: int | None, text: str, where: str) -> bool:
    if token_id is None:
        return False
    ids = tokenizer(text)["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) > len(plain) and (ids[0] if where == "first" else ids[-1]) == token_id


def write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Add the tokenizer keys of the module docstring to a `gguf.GGUFWriter` for a vocabulary of
    `vocab_size` ids (the embedding's rows); returns a summary (model, pre, tokens, has_chat_template)."""
    data = _backend(tokenizer)
    model_kind = kind(data)
    tokens: dict[int, str] = {i: t for t, i in (data["model"].get("vocab") or {}).items()}
    added = {a["id"]: a for a in data.get("added_tokens") or []}
    tokens.update({i: a["content"] for i, a in added.items()})
    if tokens and max(tokens) >= vocab_size:
        raise UserError(f"GGUF export: the tokenizer has ids up to {max(tokens)} and the embedding "
                        f"{vocab_size} rows; export with --format autocompress")
    unk = getattr(tokenizer, "unk_token_id", None)
    merges = _merges(data["model"])
    rank = {m.replace(" ", ""): r for r, m in enumerate(merges)}
    names, types, scores = [], [], []
    for i in range(vocab_size):
        token = tokens.get(i, f"[PAD{i}]")
        if i not in tokens:
            kind_ = UNUSED
        elif i == unk and model_kind == "llama":
            kind_ = UNKNOWN
        elif i in added:
            kind_ = CONTROL if added[i].get("special") else USER_DEFINED
        elif model_kind == "llama" and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            kind_ = BYTE
        else:
            kind_ = NORMAL
        names.append(token)
        types.append(kind_)
        scores.append(-float(rank[token]) if token in rank else 0.0)
    writer.add_tokenizer_model(model_kind)
    if model_kind == "gpt2":
        writer.add_tokenizer_pre(_pre(data))
    writer.add_token_list(names)
    writer.add_token_types(types)
    if model_kind == "llama":
        writer.add_token_scores(scores)
        metaspace = next((p for p in _parts(data.get("pre_tokenizer")) if p.get("type") == "Metaspace"), {})
        writer.add_add_space_prefix(metaspace.get("prepend_scheme", "always") != "never" if metaspace else True)
    else:
        writer.add_add_space_prefix(False)
    if merges:
        writer.add_token_merges(merges)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(_adds(tokenizer, getattr(tokenizer, "bos_token_id", None), _PROBE, "first"))
    writer.add_add_eos_token(_adds(tokenizer, getattr(tokenizer, "eos_token_id", None), _PROBE, "last"))
    template = getattr(tokenizer, "chat_template", None)
    if template:
        writer.add_chat_template(template if isinstance(template, str) else
                                 [{"name": k, "template": v} for k, v in template.items()])
    return {"model": model_kind, "pre": _pre(data) if model_kind == "gpt2" else None, "tokens": len(tokens),
            "chat_template": bool(template)}


def check_tokenizer(tokenizer: Any) -> str:
    """The GGUF tokenizer model ("gpt2" or "llama") of `tokenizer`; `UserError` when it has none or cannot
    be written."""
    if tokenizer is None:
        raise UserError("GGUF export: no tokenizer; a GGUF file carries its tokenizer, so pass the model's "
                        "(llama.cpp cannot run the file without one)")
    return kind(_backend(tokenizer))
