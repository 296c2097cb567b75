"""One compressed weight as the bytes of a GGUF tensor: which ggml type holds it exactly, and its blocks.

A weight [rows, cols] (cols a multiple of 32) on a quantization grid is written as ggml blocks of 32 values:
  - a `gguf_type` layer (policies/ggml.py) in its own type, byte for byte what ggml would write;
  - a layer on the integer grid (policies/quantize.py) in the smallest Q*_0 type whose range holds every
    integer k = q - zero of its grid (sym <= 4 bits and asym 1..4 bits' k in [-15, 15] ... see `int_grid_type`),
    with fp16(d) = the group's scale, so every value k * scale is reproduced exactly. That needs groups that
    are whole blocks: group_size a multiple of 32, or one group per row. Asymmetric 8-bit (k up to +-255)
    fits no type;
  - anything else (no bits) dense: 2-D weights in the model's float type (F32, F16, BF16), 1-D tensors (norms)
    always F32, as llama.cpp expects.
`pack_blocks` lays the integers and scales out as ggml's block structs (little endian):
  Q4_0 {fp16 d; uint8 qs[16]}          value j in the low nibble of qs[j], value j + 16 in the high one
  Q4_1 {fp16 d; fp16 m; uint8 qs[16]}
  Q5_0 {fp16 d; uint32 qh; uint8 qs[16]}  qh bit j = the fifth bit of value j
  Q5_1 {fp16 d; fp16 m; uint32 qh; uint8 qs[16]}
  Q8_0 {fp16 d; int8 qs[32]}
and checks them with `gguf.quants.dequantize` (the reader transformers uses): the written tensor must give back
exactly the weight the model computes with, or ValueError.
"""

from __future__ import annotations

import numpy as np
import torch

from autocompress.plan import GGUF_BLOCK, LayerPlan
from autocompress.policies import ggml
from autocompress.policies.quantize import QuantGrid, quantize_int

_OFFSET = {"Q4_0": 8, "Q5_0": 16}  # stored u = k + offset


def int_grid_type(entry: LayerPlan) -> str | None:
    """The smallest Q*_0 type holding every integer of `entry`'s integer grid (gguf_type None), or None:
    symmetric 2-4 bits Q4_0, 5 bits Q5_0, 6-8 bits Q8_0; asymmetric 2-4 bits Q5_0 (k = q - zero spans
    [-(2^b - 1), 2^b - 1]), 5-7 bits Q8_0, 8 bits none."""
    b = entry.bits
    if entry.symmetric:
        return "Q4_0" if b <= 4 else "Q5_0" if b == 5 else "Q8_0"
    return "Q5_0" if b <= 4 else "Q8_0" if b <= 7 else None


def whole_blocks(entry: LayerPlan) -> bool:
    """Whether `entry`'s groups are whole ggml blocks (group_size a multiple of 32, or per output channel)."""
    return entry.group_size is None or entry.group_size % GGUF_BLOCK == 0


def _block_scales(scale: torch.Tensor, group_size: int | None, cols: int) -> torch.Tensor:
    """Per-group scales [rows, groups] -> per-block [rows, cols / 32]; ValueError unless groups are whole blocks."""
    gs = cols if group_size is None else min(group_size, cols)
    if gs % GGUF_BLOCK:
        raise ValueError(f"groups of {gs} inputs are not whole blocks of {GGUF_BLOCK}")
    return scale.repeat_interleave(gs // GGUF_BLOCK, dim=1)[:, :cols // GGUF_BLOCK]


def quantized_tensor(w: torch.Tensor, grid: QuantGrid, entry: LayerPlan) -> tuple[str, np.ndarray, np.ndarray]:
    """(ggml type name, block bytes uint8 [rows, cols / 32 * block bytes], the float32 values they hold) of a
    weight `w` [rows, cols] lying on `grid` (the grid `entry` planned). ValueError when the bytes do not give
    back `w` exactly."""
    rows, cols = w.shape
    if cols % GGUF_BLOCK:
        raise ValueError(f"{cols} inputs per row are not whole blocks of {GGUF_BLOCK}")
    if grid.gguf_type is not None:
        qtype, codes = grid.gguf_type, ggml.ggml_codes(w, grid)
        d16, m16 = grid.scale, grid.minimum
    else:
        qtype = int_grid_type(entry)
        if qtype is None:
            raise ValueError("8-bit asymmetric integers fit no ggml type")
        q = quantize_int(w, grid.scale, grid.zero, grid.bits, grid.group_size, grid.symmetric)
        k = q - grid.zero.to(torch.int32).repeat_interleave(cols if grid.group_size is None else
                                                            min(grid.group_size, cols), dim=1)[:, :cols]
        codes, d16, m16 = k + _OFFSET.get(qtype, 0), _block_scales(grid.scale, grid.group_size, cols), None
    data = pack_blocks(codes, d16, m16, qtype)
    return qtype, data, check_blocks(data, qtype, w)


def pack_blocks(codes: torch.Tensor, d16: torch.Tensor, m16: torch.Tensor | None, qtype: str) -> np.ndarray:
    """ggml block structs (module docstring) of stored integers `codes` [rows, cols] with per-block fp16
    scales `d16` (and minima `m16` for the *_1 types) [rows, cols / 32]: uint8 [rows, blocks * bytes]."""
    rows, cols = codes.shape
    u = codes.detach().cpu().numpy().reshape(rows * cols // GGUF_BLOCK, GGUF_BLOCK)
    parts = [d16.detach().cpu().numpy().astype(np.float16).reshape(-1, 1).view(np.uint8)]
    if qtype in ("Q4_1", "Q5_1"):
        parts.append(m16.detach().cpu().numpy().astype(np.float16).reshape(-1, 1).view(np.uint8))
    if qtype == "Q8_0":
        parts.append(u.astype(np.int8).view(np.uint8))
    else:
        if qtype in ("Q5_0", "Q5_1"):
            parts.append(np.packbits((u >> 4).astype(np.uint8) & 1, axis=-1, bitorder="little"))
        low = (u & 0x0F).astype(np.uint8)
        parts.append(low[:, :16] | (low[:, 16:] << 4))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def check_blocks(data: np.ndarray, qtype: str, w: torch.Tensor) -> np.ndarray:
    """The float32 values `gguf.quants.dequantize` reads from `data`; ValueError unless they equal `w`."""
    import gguf

    back = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype])
    if not np.array_equal(back, w.detach().float().cpu().numpy()):
        raise ValueError(f"the {qtype} blocks do not give back the weight exactly")
    return back


def dense_tensor(t: torch.Tensor) -> tuple[str, np.ndarray]:
    """(ggml type name, array) of a tensor kept as it is: 1-D always F32, else the tensor's float type."""
    t = t.detach().cpu()
    if t.dim() == 1 or t.dtype == torch.float32:
        return "F32", t.float().numpy()
    if t.dtype == torch.float16:
        return "F16", t.numpy()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: its raw bits, written as BF16
        return "BF16", t.view(torch.int16).numpy().view(np.uint8).reshape(*t.shape[:-1], -1)
    return "F32", t.float().numpy()
