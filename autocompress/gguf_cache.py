"""Convert a GGUF file once into a plain Hugging Face model directory, and reuse it.

transformers loads a GGUF by dequantizing every tensor (tens of seconds for SmolLM2-135M on a CPU); a search
loads the model in every worker and trial process, so the dequantized model is written once into a cache and
every later load is the ordinary safetensors path.

Layout: `<root>/gguf/<stem>-<key>/` where `<root>` is `$AUTOCOMPRESS_CACHE`, else
`$XDG_CACHE_HOME/autocompress`, else `~/.cache/autocompress`; `<stem>` is the file's name without `.gguf`.
An entry holds config.json (without the `quantization_config` GGUF loading adds, `architectures` naming the
converted class), model.safetensors (exactly the tensors transformers dequantized, in the dtype it
dequantized to: float32 for a quantized file; tied weights stored once and tied again on load), the tokenizer
files transformers builds from the GGUF's vocabulary (chat template included), generation_config.json, and
`autocompress-gguf.json`, the marker recording the source file, its sha256, CONVERSION_VERSION and the
transformers version.

Keying: `<key>` is the first 16 hex digits of sha256 over the file's sha256, CONVERSION_VERSION and the
transformers version, so a changed file, a changed conversion, or a transformers that dequantizes differently
each get a new entry; the old ones stay until deleted by hand. Hashing reads the whole file on every load
(98 MB for SmolLM2), far less than a conversion.

Concurrency and crashes: an entry is used only when its marker is present and names the same sha256,
CONVERSION_VERSION and transformers version. A conversion runs under a file lock (`<entry>.lock`, the
`filelock` package) into a temporary sibling `.<stem>-<key>.tmp-<pid>-<random>`, writes the marker last and
renames the directory into place atomically, so two processes converting the same file at once convert it
once (the second waits for the lock, then finds the entry), and a process killed mid-conversion leaves only a
temporary directory, which is never read and is removed by the next conversion of that file. An entry
without a valid marker is removed and converted again. Everything `gguf_source.check_gguf` and
`gguf_config` refuse is refused before the cache is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from autocompress.errors import UserError
from autocompress.gguf_source import SETUP_HINT, check_gguf, gguf_config

CONVERSION_VERSION = 1
MARKER = "autocompress-gguf.json"
CACHE_ENV = "AUTOCOMPRESS_CACHE"


def cache_root() -> Path:
    """`$AUTOCOMPRESS_CACHE`, else `$XDG_CACHE_HOME/autocompress`, else `~/.cache/autocompress`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "autocompress"
    return Path.home() / ".cache" / "autocompress"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _identity(sha256: str) -> dict[str, Any]:
    import transformers

    return {"sha256": sha256, "conversion_version": CONVERSION_VERSION,
            "transformers_version": transformers.__version__}


def cache_entry(path: str, sha256: str | None = None) -> tuple[Path, dict[str, Any]]:
    """(the entry directory for the GGUF at `path`, the identity its marker must record)."""
    identity = _identity(sha256 or file_sha256(path))
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    stem = os.path.basename(path)
    stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
    return cache_root() / "gguf" / f"{stem}-{key}", identity


def is_complete(entry: Path, identity: dict[str, Any]) -> bool:
    """Whether `entry` is a finished conversion of the file and transformers `identity` names."""
    try:
        marker = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (all(marker.get(k) == v for k, v in identity.items())
            and (entry / "config.json").is_file() and any(entry.glob("*.safetensors")))


def find_converted(path: str, spec: str) -> str | None:
    """The complete cache entry of the GGUF at `path`, or None; `UserError` for a file `check_gguf` refuses.
    Reads the header's layout and hashes the file; converts nothing."""
    check_gguf(path, spec)
    entry, identity = cache_entry(path)
    return str(entry) if is_complete(entry, identity) else None


def converted_model_dir(path: str, spec: str, config: Any = None) -> str:
    """The cache directory holding the GGUF at `path` as a Hugging Face model, converting it first when no
    complete entry exists (see the module docstring). `config`: the file's `gguf_config`, when the caller
    has it already. `UserError` for a file the conversion refuses."""
    check_gguf(path, spec)
    entry, identity = cache_entry(path)
    if is_complete(entry, identity):
        return str(entry)
    if config is None:  # refuses an architecture transformers cannot read, before any write
        config = gguf_config(path, spec)
    _require_accelerate(spec)
    from filelock import FileLock

    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"model {spec!r}: cannot create the GGUF cache {entry.parent} ({exc.strerror}); set "
                        f"{CACHE_ENV} to a writable directory") from None
    with FileLock(str(entry) + ".lock"):
        if is_complete(entry, identity):  # another process converted it while this one waited
            return str(entry)
        for stale in entry.parent.glob(f".{entry.name}.tmp-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        if entry.exists():  # an entry without a valid marker
            shutil.rmtree(entry)
        tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            print(f"autocompress: converting {path} once, into {entry} (later loads read the cache)",
                  file=sys.stderr, flush=True)
            convert(path, config, tmp)
            (tmp / MARKER).write_text(json.dumps({"source": os.path.abspath(path), **identity}, indent=2) + "\n")
            os.rename(tmp, entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(entry)


def _require_accelerate(spec: str) -> None:
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise UserError(f"model {spec!r}: loading a GGUF file's weights needs the accelerate package, which is "
                        f"not installed; {SETUP_HINT}")


def convert(path: str, config: Any, out: Path) -> None:
    """Write the GGUF at `path` into `out` as a Hugging Face model: the tensors transformers dequantizes, in
    the model class `config.architectures` names, rebuilt from a config without `quantization_config` (a
    GGUF-loaded model refuses `save_pretrained`), and the tokenizer transformers builds from the file."""
    import copy

    import transformers

    transformers.logging.set_verbosity_error()
    folder, name = os.path.split(os.path.abspath(path))
    model_class = getattr(transformers, config.architectures[0])
    kwargs: dict[str, Any] = {"gguf_file": name, "config": config}  # the header is not parsed again
    if hasattr(transformers, "GgufConfig"):  # dense weights even where a GGUF kernel package is installed
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    gguf_model = model_class.from_pretrained(folder, **kwargs)
    clean = copy.deepcopy(gguf_model.config)
    clean.__dict__.pop("quantization_config", None)
    clean.architectures = list(config.architectures)
    model = model_class.from_pretrained(None, config=clean, state_dict=gguf_model.state_dict(),
                                        dtype=gguf_model.dtype)
    del gguf_model
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # no tokenizer section, or one transformers cannot convert
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: transformers cannot build a tokenizer from this GGUF ({first}); give a "
                        "Hugging Face model directory instead") from None
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
