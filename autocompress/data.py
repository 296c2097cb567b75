"""Text sets and tokenized batches for calibration and evaluation.

`load_texts("builtin")` needs no download: it is built from the docstrings of a fixed list of side-effect-free
Python standard-library modules (and of their public functions, classes and methods), cut into sentences of
6..40 words with code-like pieces dropped, deduplicated and sorted (corpus.py). The set (about 2,100
sentences) is read in a clean interpreter, so it is the same in every process of a given Python version,
whatever that process has imported; a sample from it is fixed by its seed. Files give one text per
non-empty line (.txt) or a "text" field per line (.jsonl). `load_texts("python-docs")` gives longer texts
for language-model context: prose passages of 200..400 words from the Python Language Reference that ships
with CPython (python_docs.py; about 180 passages, PSF License). Every bad input raises `UserError` naming
the file and the fix. This module imports torch only inside `make_batches`.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import random
import subprocess
import sys
import warnings
from typing import Any, Sequence

from autocompress.errors import UserError


@functools.lru_cache(maxsize=1)
def builtin_corpus() -> tuple[str, ...]:
    """All sentences of the built-in corpus, deduplicated and sorted, as a clean interpreter of this Python sees
    them (corpus.py says why); the same in every process. Falls back to this process's view, with a warning, if
    the interpreter cannot be started."""
    from autocompress import corpus

    try:
        done = subprocess.run([sys.executable, "-I", "-S", corpus.__file__], capture_output=True, text=True,
                              timeout=120, check=True)
        return tuple(json.loads(done.stdout))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        warnings.warn(f"the builtin corpus was read in this process ({type(exc).__name__}: {exc}); seeded samples "
                      "from it may differ from other processes'", stacklevel=2)
        return tuple(corpus.collect())


def _read_text(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise UserError(f"{what} file {path!r} does not exist; check the path")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError:
        raise UserError(f"{what} file {path!r} is not UTF-8 text; re-save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{what} file {path!r} cannot be read: {exc.strerror}") from None


def _jsonl_records(path: str, text: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object such as {{\"text\": \"...\"}}")
        for key in fields:
            if key not in rec:
                raise UserError(f"{path}:{lineno}: the object has no {key!r} field; give every line a {key!r}")
        if not isinstance(rec["text"], str) or not rec["text"].strip():
            raise UserError(f"{path}:{lineno}: 'text' must be a non-empty string")
        records.append(rec)
    return records


TEXT_SOURCES = ("builtin", "python-docs")  # the named sources; any other source is a file


@functools.lru_cache(maxsize=1)
def python_docs_passages() -> tuple[str, ...]:
    """The python-docs passages (python_docs.py), in topic order. `UserError` when this Python lacks them."""
    from autocompress import python_docs

    try:
        return tuple(python_docs.passages())
    except ImportError:
        raise UserError("the python-docs source needs the standard library's pydoc_data module, which this "
                        "Python lacks; use builtin or a .txt/.jsonl file of texts") from None


def load_texts(source: str = "builtin", n: int | None = None, seed: int = 0) -> list[str]:
    """Texts from `source`: "builtin" or "python-docs" (see the module docstring), a .txt file or a .jsonl file.

    With `n` None every text is returned (builtin: sorted; python-docs: in topic order; files: in file
    order). With `n` given, `random.Random(seed).sample` picks `min(n, available)` texts; if `n` exceeds what
    is available, all texts are returned in sampled order (no error). Raises `UserError` for a missing,
    non-UTF-8, empty or malformed file, an unsupported extension, or `n < 1`.
    """
    if n is not None and (type(n) is not int or n < 1):
        raise UserError(f"number of texts n={n!r} must be a positive integer")
    if source == "builtin":
        texts = list(builtin_corpus())
        if not texts:
            raise UserError("the builtin corpus is empty (Python runs with -OO, which strips docstrings); "
                            "give a .txt or .jsonl file of texts instead")
    elif source == "python-docs":
        texts = list(python_docs_passages())
    else:
        ext = os.path.splitext(source)[1].lower()
        if ext not in (".txt", ".jsonl"):
            raise UserError(f"text file {source!r}: unsupported extension {ext or '(none)'!r}; use builtin, "
                            "python-docs, a .txt file (one text per line) or a .jsonl file (a \"text\" field per "
                            "line)")
        raw = _read_text(source, "text")
        if ext == ".txt":
            texts = [ln.strip() for ln in raw.splitlines() if ln.strip()]
        else:
            texts = [rec["text"] for rec in _jsonl_records(source, raw, ("text",))]
        if not texts:
            raise UserError(f"text file {source!r} holds no texts; put one text per non-empty line")
    if n is None:
        return texts
    return random.Random(seed).sample(texts, min(n, len(texts)))


def load_labeled(path: str) -> tuple[list[str], list[Any]]:
    """(texts, raw labels) from .jsonl ({"text": ..., "label": ...} per line) or .csv (header with text,label).

    Labels are kept as read (ints or strings; CSV gives strings); evaluators map them to class ids.
    Raises `UserError` for a missing, non-UTF-8, empty or malformed file or an unsupported extension.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv"):
        raise UserError(f"labeled file {path!r}: unsupported extension {ext or '(none)'!r}; use .jsonl "
                        "({\"text\": ..., \"label\": ...} per line) or .csv (header text,label)")
    raw = _read_text(path, "labeled")
    texts: list[str] = []
    labels: list[Any] = []
    if ext == ".jsonl":
        for rec in _jsonl_records(path, raw, ("text", "label")):
            if isinstance(rec["label"], bool) or not isinstance(rec["label"], (int, str)):
                raise UserError(f"{path}: label {rec['label']!r} must be an integer or a string")
            texts.append(rec["text"])
            labels.append(rec["label"])
    else:
        reader = csv.DictReader(io.StringIO(raw, newline=""))
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise UserError(f"labeled file {path!r}: the first line must be a header naming the columns "
                            "text and label")
        for row in reader:
            if row["text"] is None or row["label"] is None or not row["text"].strip():
                raise UserError(f"{path}:{reader.line_num}: the row needs a non-empty text and a label")
            texts.append(row["text"])
            labels.append(row["label"].strip())
    if not texts:
        raise UserError(f"labeled file {path!r} holds no examples; add lines with a text and a label")
    return texts, labels


def make_batches(tokenizer: Any, texts: Sequence[str], batch_size: int = 16, max_length: int = 128,
                 keys: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids"),
                 ) -> list[dict[str, Any]]:
    """Tokenize `texts` in order into batches of at most `batch_size`: right-padded to the longest text of
    each batch, truncated to `max_length` tokens, as torch tensors. Only the `keys` the tokenizer produces
    are kept. A tokenizer without a pad token (GPT-2) is padded with id 0 under attention_mask 0."""
    import torch

    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size={batch_size} and max_length={max_length} must be positive")
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        if tokenizer.pad_token_id is not None:
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            batches.append({k: enc[k] for k in keys if k in enc})
            continue
        enc = tokenizer(chunk, truncation=True, max_length=max_length)
        width = max(len(ids) for ids in enc["input_ids"])
        batch = {k: torch.tensor([list(v) + [0] * (width - len(v)) for v in enc[k]]) for k in keys if k in enc}
        if "attention_mask" in keys:
            batch["attention_mask"] = torch.tensor([[1] * len(v) + [0] * (width - len(v)) for v in enc["input_ids"]])
        batches.append(batch)
    return batches
