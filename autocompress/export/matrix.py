"""One weight matrix [rows, cols] <-> its packed tensors, in the layout `evaluators/size.py` specifies.

Packed tensors of one matrix, by suffix (the caller prefixes them with the parameter name, e.g.
`encoder.layer.0.attention.self.query.weight.qweight`):
  qweight  uint8  the integers q - qmin of the stored values, bit-packed at `bits` (`packing.pack_bits`);
                  symmetric q in [-(2^(b-1)-1), 2^(b-1)-1] is stored offset to q + 2^(b-1)-1
  scales   fp16   [rows, groups] (quantized only)
  codebook fp16   [books, 2^bits] (quant_method kmeans, instead of scales: qweight then holds centroid indices;
                  policies/kmeans.py)
  zeros    uint8  [rows, groups] (quantized and asymmetric only)
  values   dtype  the stored values themselves (sparse and not quantized)
  mask     uint8  the bitmask of kept weights, row-major (layout "bitmask")
  nm_index uint8  the position of each kept value in its group of M (layout "N:M"; tail columns excluded)
Stored values are the kept ones in row-major order (all of them for "dense"). For N:M each row keeps N of
every M in its first (cols // M) * M columns and all of its tail columns. A dense matrix that is not quantized
has no packed tensors: the caller stores the parameter itself.

The kept set: quantization can round a kept weight to exactly 0, so the mask is "every nonzero, plus the first
zeros of the row (of the group for N:M) until the planned count is reached": numerically identical, and the
byte count is the planned one. A matrix with more nonzeros than its plan keeps is refused (ValueError).
"""

from __future__ import annotations

from typing import Any

import torch

from autocompress.errors import UserError
from autocompress.evaluators.size import matrix_bytes
from autocompress.export import packing
from autocompress.plan import LayerPlan
from autocompress.policies.kmeans import Codebook, codebook_indices, codebook_values, codebook_violation
from autocompress.policies.quantize import QuantGrid, dequantize, qrange, quantize_int


def fill_mask(nonzero: torch.Tensor, keep: int) -> torch.Tensor:
    """[groups, width] bool: every True of `nonzero` plus its first False entries, so that each row holds exactly
    `keep` True. ValueError if a row already has more than `keep` nonzeros."""
    counts = nonzero.sum(1)
    if counts.numel() and int(counts.max()) > keep:
        raise ValueError(f"a row holds {int(counts.max())} nonzero weights but the plan keeps {keep}")
    order = torch.argsort((~nonzero).to(torch.int8), dim=1, stable=True)[:, :keep]
    return torch.zeros_like(nonzero).scatter_(1, order, True)


def kept_mask(w: torch.Tensor, layout: str, entry: LayerPlan | None) -> torch.Tensor | None:
    """The boolean keep-mask [rows, cols] of `w` for a sparse `layout`, or None for "dense"."""
    rows, cols = w.shape
    nonzero = w != 0
    if layout == "dense":
        return None
    if layout == "bitmask":
        return fill_mask(nonzero, cols - round(entry.sparsity * cols))
    n, m = entry.n_m
    body = (cols // m) * m
    mask = torch.ones(rows, cols, dtype=torch.bool)
    mask[:, :body] = fill_mask(nonzero[:, :body].reshape(-1, m), n).reshape(rows, body)
    return mask


def _check_grid(grid: QuantGrid | None, entry: LayerPlan, shape: tuple[int, int], where: str) -> QuantGrid:
    if grid is None:
        raise ValueError(f"{where}: the plan quantizes it but it has no recorded grid (_autocompress_grid); "
                         "export the model that apply_plan returned")
    if (grid.bits, grid.group_size, grid.symmetric) != (entry.bits, entry.group_size, entry.symmetric) \
            or grid.scale.shape[0] != shape[0]:
        raise ValueError(f"{where}: its recorded grid does not match the plan entry or the weight shape")
    return grid


def _check_codebook(w: torch.Tensor, book: Codebook | None, entry: LayerPlan, where: str) -> Codebook:
    why = codebook_violation(w, entry, book)
    if why is not None:
        raise ValueError(f"{where}: {why}; export the model that apply_plan returned")
    return book


def pack_matrix(w: torch.Tensor, entry: LayerPlan | None, grid: QuantGrid | None, dtype_bytes: int,
                sparse: bool = True, where: str = "weight") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors by suffix, metadata) of the [rows, cols] weight `w` under `entry`; the layout is the one
    `matrix_bytes(rows, cols, entry, dtype_bytes, sparse)` chooses, and the tensors' bytes are its count.
    Quantized weights must lie exactly on `grid` (ValueError otherwise)."""
    w = w.detach().cpu()
    rows, cols = w.shape
    nbytes, layout = matrix_bytes(rows, cols, entry, dtype_bytes, sparse)
    bits = entry.bits if entry is not None else None
    meta: dict[str, Any] = {"shape": [rows, cols], "layout": layout, "bits": bits, "bytes": nbytes}
    mask = kept_mask(w, layout, entry)
    out: dict[str, torch.Tensor] = {}
    if entry is not None and entry.gguf_type is not None:
        raise UserError(f"{where} is on ggml's {entry.gguf_type} grid (gguf_type), which this format does not "
                        "store; export it with --format gguf")
    if bits is not None and entry.quant_method == "kmeans":
        book = _check_codebook(w, grid, entry, where)
        idx = codebook_indices(w, book)
        out["qweight"] = packing.pack_bits(idx if mask is None else idx[mask], bits)
        out["codebook"] = book.centroids.to(torch.float16).contiguous()
        meta.update(group_size=book.group_size, symmetric=True, quant_method="kmeans")
    elif bits is not None:
        grid = _check_grid(grid, entry, (rows, cols), where)
        q = quantize_int(w, grid.scale, grid.zero, bits, grid.group_size, grid.symmetric)
        if not torch.equal(dequantize(q, grid.scale, grid.zero, grid.group_size).to(w.dtype), w):
            raise ValueError(f"{where}: the weights are not on the recorded grid (changed after quantization?)")
        qmin, _ = qrange(bits, grid.symmetric)
        stored = (q - qmin) if mask is None else (q - qmin)[mask]
        out["qweight"] = packing.pack_bits(stored, bits)
        out["scales"] = grid.scale.to(torch.float16).contiguous()
        if not grid.symmetric:
            out["zeros"] = grid.zero.to(torch.uint8).contiguous()
        meta.update(group_size=grid.group_size, symmetric=grid.symmetric)
    elif mask is not None:
        out["values"] = w[mask].contiguous()
    if mask is not None:
        meta["kept"] = int(mask.sum())
        if layout == "bitmask":
            out["mask"] = packing.pack_mask(mask)
        else:
            n, m = entry.n_m
            meta["n_m"] = [n, m]
            out["nm_index"] = packing.pack_nm_index(mask[:, :(cols // m) * m], n, m)
    got = sum(t.numel() * t.element_size() for t in out.values())
    if out and got != nbytes:
        raise AssertionError(f"{where}: packed {got} bytes, the size model says {nbytes}")
    return out, meta


def unpack_mask(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor | None:
    """The keep-mask [rows, cols] of a packed matrix, or None for a dense one."""
    rows, cols = meta["shape"]
    if meta["layout"] == "dense":
        return None
    if meta["layout"] == "bitmask":
        return packing.unpack_mask(tensors["mask"], (rows, cols))
    n, m = meta["n_m"]
    body = (cols // m) * m
    mask = torch.ones(rows, cols, dtype=torch.bool)
    mask[:, :body] = packing.unpack_nm_index(tensors["nm_index"], n, m, rows, body)
    return mask


def unpack_int(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[torch.Tensor, QuantGrid]:
    """(q int32 [rows, cols] in `qrange`, its QuantGrid) of a quantized packed matrix; weights the mask
    drops get q = zero (the value 0)."""
    rows, cols = meta["shape"]
    bits, gs, sym = meta["bits"], meta["group_size"], meta["symmetric"]
    scale = tensors["scales"].float()
    zero = tensors["zeros"].float() if not sym else torch.zeros_like(scale)
    grid = QuantGrid(bits, gs, sym, scale, zero)
    mask = unpack_mask(tensors, meta)
    qmin, _ = qrange(bits, sym)
    n = rows * cols if mask is None else int(mask.sum())
    stored = packing.unpack_bits(tensors["qweight"], bits, n) + qmin
    if mask is None:
        return stored.reshape(rows, cols), grid
    group_len = cols if gs is None else max(1, min(gs, cols))
    q = zero.to(torch.int32).repeat_interleave(group_len, dim=1)[:, :cols].contiguous()
    q[mask] = stored
    return q, grid


def unpack_matrix(tensors: dict[str, torch.Tensor], meta: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
    """The weight [rows, cols] in `dtype` of a packed matrix: quantized ones dequantized as
    (q - zero) * scale in float32 then cast; sparse ones with zeros where the mask drops."""
    rows, cols = meta["shape"]
    if meta.get("quant_method") == "kmeans":
        return unpack_codebook(tensors, meta).to(dtype)
    if meta["bits"] is not None:
        q, grid = unpack_int(tensors, meta)
        return dequantize(q, grid.scale, grid.zero, grid.group_size).to(dtype)
    mask = unpack_mask(tensors, meta)
    w = torch.zeros(rows, cols, dtype=dtype)
    w[mask] = tensors["values"].to(dtype)
    return w


def unpack_codebook(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
    """The float32 weight [rows, cols] of a clustered (kmeans) packed matrix: each stored index's centroid,
    0 where the mask drops the weight."""
    rows, cols = meta["shape"]
    book = Codebook(meta["bits"], meta["group_size"], tensors["codebook"].float())
    mask = unpack_mask(tensors, meta)
    n = rows * cols if mask is None else int(mask.sum())
    stored = packing.unpack_bits(tensors["qweight"], meta["bits"], n)
    if mask is None:
        return codebook_values(stored.reshape(rows, cols), book)
    idx = torch.zeros(rows, cols, dtype=torch.int32)
    idx[mask] = stored.to(torch.int32)
    return torch.where(mask, codebook_values(idx, book), torch.zeros(()))
