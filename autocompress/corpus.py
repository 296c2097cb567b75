"""The built-in text corpus: sentences from the docstrings of a fixed list of Python standard-library modules.

Stdlib-only on purpose: `autocompress.data.builtin_corpus` runs this file as a script in a clean interpreter
(`python -I -S corpus.py`, which prints the sentences as a JSON list), because the docstrings a live process
sees depend on what it has imported: importing Ray replaces `inspect.isgenerator` with a wrapper, which took
one sentence out of the corpus and so changed every seeded sample drawn from it between a Ray worker and a
plain process. In a clean interpreter the corpus depends on the Python version alone.

`collect()` returns the sentences (6..40 words, prose only, code-like pieces dropped), deduplicated and sorted.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from typing import Any

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


def collect() -> list[str]:
    """All sentences of the corpus as this process sees the modules, deduplicated and sorted. Modules that fail
    to import are skipped."""
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
    return sorted(found)


if __name__ == "__main__":
    json.dump(collect(), sys.stdout)
