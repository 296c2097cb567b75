"""Lossless entropy coding of the packed integer streams of an export (`save_compressed(..., entropy=...)`).

What is coded, each tensor as one independent stream:
  - every packed tensor whose suffix is in `CODED` (the bit-packed integer codes `qweight`, the zero points
    `zeros`, the sparsity bitmask `mask` and the N:M indices `nm_index`; see export/matrix.py), as its bytes;
  - NeuZip-style, every floating-point tensor of at least `FLOAT_MIN` values (weights left in floating point,
    the kept values of sparse layers, fp16 scales): its bytes split into byte planes first (all values' first
    byte, then all second bytes, ...), so that the plane holding the exponent, which takes few distinct values
    in trained weights, is one run a coder shrinks well; the mantissa planes barely shrink.
A stream is coded only when that makes it smaller; it is then stored as the uint8 tensor `<name>.coded`
instead of `<name>`, and the safetensors header's "coded" entry maps `<name>` to {"coder", "dtype", "shape",
"bytes" (the stream's raw length), "crc32" (of the raw stream), "planes" (split into byte planes)}.

Coders (`CODERS`): "zstd" (the `zstandard` package, level `ZSTD_LEVEL`, frames with a content checksum),
"lzma" (the standard library's xz, preset 9) and "zlib" (level 9). Decoding restores every tensor bit for bit: a stream
that does not decode, decodes to another length, or fails its CRC-32 raises `UserError` naming the tensor;
never silent garbage.
"""

from __future__ import annotations

import lzma
import zlib
from typing import Any, Callable

import torch

from autocompress.errors import UserError

CODED = ("qweight", "zeros", "mask", "nm_index")
CODED_SUFFIX = "coded"
FLOAT_MIN = 4096  # floating-point tensors smaller than this are left as they are
ZSTD_LEVEL = 9  # level 19 codes MiniLM's fp32 weights 0.8% smaller, 18x slower: too slow for a per-trial metric


def _zstd_encode(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(data)


def _zstd_decode(data: bytes, size: int) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)


CODERS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]] = {
    "zstd": (_zstd_encode, _zstd_decode),
    "lzma": (lambda d: lzma.compress(d, preset=9), lambda d, n: lzma.decompress(d)),
    "zlib": (lambda d: zlib.compress(d, 9), lambda d, n: zlib.decompress(d)),
}


def check_coder(name: str | None) -> None:
    """`UserError` unless `name` is None (no coding) or one of `CODERS`."""
    if name is not None and name not in CODERS:
        raise UserError(f"entropy={name!r} is unknown; use one of {', '.join(CODERS)}, or none")


def is_coded(name: str) -> bool:
    """Whether the tensor `name` is one of the integer streams `encode` codes."""
    return name.rsplit(".", 1)[-1] in CODED


def _to_bytes(t: torch.Tensor, planes: bool) -> bytes:
    """The raw bytes of `t`, byte plane after byte plane when `planes` (module docstring)."""
    b = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    if planes:
        b = b.reshape(-1, t.element_size()).t().contiguous()
    return b.numpy().tobytes()


def _from_bytes(raw: bytes, dtype: torch.dtype, shape: list[int], planes: bool) -> torch.Tensor:
    b = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    size = torch.empty(0, dtype=dtype).element_size()
    if planes:
        b = b.reshape(size, -1).t().contiguous()
    return b.reshape(-1).view(dtype).reshape(shape).clone()


def encode(tensors: dict[str, torch.Tensor], coder: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the tensors with every integer stream and every floating-point tensor of at least `FLOAT_MIN` values
    coded where that is smaller, the header's "coded" entry); see the module docstring. `tensors` is not
    modified."""
    check_coder(coder)
    enc = CODERS[coder][0]
    out: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, t in tensors.items():
        planes = t.is_floating_point()
        if not (is_coded(name) or (planes and t.numel() >= FLOAT_MIN)):
            out[name] = t
            continue
        raw = _to_bytes(t, planes)
        blob = enc(raw)
        if len(blob) >= len(raw):
            out[name] = t
            continue
        out[f"{name}.{CODED_SUFFIX}"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        meta[name] = {"coder": coder, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                      "bytes": len(raw), "crc32": zlib.crc32(raw), "planes": planes}
    return out, meta


def decode(tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The tensors `encode` was given, from its output and its "coded" entry `meta`; `UserError` naming the
    tensor (and `where`, the export) for a stream that is missing, does not decode or fails its checksum."""
    out = dict(tensors)
    for name, m in meta.items():
        stored = out.pop(f"{name}.{CODED_SUFFIX}", None)

        def bad(why: str) -> UserError:
            return UserError(f"export {where!r}: the entropy-coded tensor {name!r} {why}; export the model again")

        if stored is None:
            raise bad("is missing from model.safetensors")
        try:
            coder, size = m["coder"], int(m["bytes"])
            raw = CODERS[coder][1](stored.numpy().tobytes(), size)
            dtype, shape, crc, planes = getattr(torch, m["dtype"]), m["shape"], int(m["crc32"]), bool(m["planes"])
        except Exception as exc:  # each coder raises its own error type for a corrupt stream
            raise bad(f"does not decode ({type(exc).__name__}: {str(exc)[:80]})") from None
        if len(raw) != size or zlib.crc32(raw) != crc:
            raise bad(f"decodes to {len(raw)} bytes that fail the stored length ({size}) or CRC-32 check")
        out[name] = _from_bytes(raw, dtype, shape, planes)
    return out


def coded_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors as stored (coded streams at their coded length)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def size_coded_mb(model: Any, plan: Any, info: Any, coder: str = "zstd") -> float:
    """The `size_coded_mb` metric: megabytes (1e6 bytes) of the packed tensors of `model` (what `apply_plan`
    returned for `plan`; `info` the original model's inventory) coded by `coder` (`encode`), as
    `save_compressed(..., entropy=coder)` stores them. `size_mb` (`plan_size`) stays the uncoded packed size."""
    from autocompress.export.packed import pack_model

    return coded_bytes(encode(pack_model(model, plan, info).tensors, coder)[0]) / 1e6
