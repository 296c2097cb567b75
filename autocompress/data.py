"""Text sets and tokenized batches for calibration and evaluation.

`load_texts("builtin")` needs no download: it is built from the docstrings of a fixed list of side-effect-free
Python standard-library modules (and of their public functions, classes and methods), cut into sentences of
6..40 words with code-like pieces dropped, deduplicated and sorted. The set (about 2,000 sentences) is the
same on every run of a given Python version; a sample from it is fixed by its seed. Files give one text per
non-empty line (.txt) or a "text" field per line (.jsonl). Every bad input raises `UserError` naming the
file and the fix. This module imports torch only inside `make_batches`.
"""

from __future__ import annotations

import csv
import functools
import importlib
import inspect
import io
import json
import os
import random
import re
import warnings
from typing import Any, Sequence

from autocompress.errors import UserError

# Importing these has no side effects beyond defining names. Never add `this`, `antigravity` or GUI modules.
_STDLIB_MODULES = (
    "abc", "argparse", "array", "ast", "base64", "bisect", "bz2", "calendar", "cmath", "codecs",
    "collections", "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "email.message", "enum", "filecmp", "fnmatch", "fractions", "functools",
    "getopt", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "inspect",
    "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging", "lzma", "math",
    "mimetypes", "numbers", "operator", "pathlib", "pickle", "pprint", "queue", "random", "re", "reprlib",
    "sched", "secrets", "shlex", "shutil", "statistics", "string", "struct", "tarfile", "tempfile",
    "textwrap", "threading", "tokenize", "traceback", "types", "typing", "unicodedata", "urllib.parse",
    "uuid", "warnings", "weakref", "zipfile",
)
_MIN_WORDS, _MAX_WORDS = 6, 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "no.")
_SYMBOLS = set("{}[]()<>=_*/\\|#@$%^&~`+;")


def _docstrings(module: Any) -> list[str]:
    """The module's docstring and those of its own public functions, classes and their methods."""
    out = [module.__doc__ or ""]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            out.append(obj.__doc__ or "")
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and inspect.isroutine(member):
                    out.append(getattr(member, "__doc__", None) or "")
    return out


def _is_prose(s: str) -> bool:
    return (_MIN_WORDS <= len(s.split()) <= _MAX_WORDS and ">>>" not in s and "::" not in s and s.isascii()
            and s[0].isupper() and s[-1] in ".!?" and s.count("(") == s.count(")") and s.count('"') % 2 == 0
            and sum(c in _SYMBOLS for c in s) <= max(1, len(s) // 40))


def _sentences(doc: str) -> list[str]:
    out = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines = para.splitlines()
        # code blocks, doctests, tables and indented continuation blocks are not prose
        if not lines or any(ln.startswith((" ", "\t", ">>>", "...")) for ln in lines):
            continue
        pieces: list[str] = []
        for piece in _SENTENCE_END.split(" ".join(ln.strip() for ln in lines)):
            if pieces and pieces[-1].lower().endswith(_ABBREVIATIONS):
                pieces[-1] += " " + piece  # "e.g. The" does not end a sentence
            else:
                pieces.append(piece)
        out.extend(s.strip() for s in pieces if _is_prose(s.strip()))
    return out


@functools.lru_cache(maxsize=1)
def builtin_corpus() -> tuple[str, ...]:
    """All sentences of the built-in corpus, deduplicated and sorted. Modules that fail to import are skipped."""
    found: set[str] = set()
    for name in _STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an absent optional module only shrinks the corpus
            continue
        with warnings.catch_warnings():  # reading e.g. typing.io's docstring warns about its deprecation
            warnings.simplefilter("ignore")
            docs = _docstrings(module)
        for doc in docs:
            found.update(_sentences(doc))
    return tuple(sorted(found))


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


def load_texts(source: str = "builtin", n: int | None = None, seed: int = 0) -> list[str]:
    """Texts from `source`: "builtin" (see the module docstring), a .txt file or a .jsonl file.

    With `n` None every text is returned (builtin: sorted; files: in file order). With `n` given,
    `random.Random(seed).sample` picks `min(n, available)` texts; if `n` exceeds what is available, all
    texts are returned in sampled order (no error). Raises `UserError` for a missing, non-UTF-8, empty or
    malformed file, an unsupported extension, or `n < 1`.
    """
    if n is not None and (type(n) is not int or n < 1):
        raise UserError(f"number of texts n={n!r} must be a positive integer")
    if source == "builtin":
        texts = list(builtin_corpus())
        if not texts:
            raise UserError("the builtin corpus is empty (Python runs with -OO, which strips docstrings); "
                            "give a .txt or .jsonl file of texts instead")
    else:
        ext = os.path.splitext(source)[1].lower()
        if ext not in (".txt", ".jsonl"):
            raise UserError(f"text file {source!r}: unsupported extension {ext or '(none)'!r}; use builtin, "
                            "a .txt file (one text per line) or a .jsonl file (a \"text\" field per line)")
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
