"""ggml's block grids (llama.cpp's Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), reproduced bit for bit in torch.

A layer planned with `gguf_type` is fake-quantized onto exactly the values a GGUF file of that type holds,
so the model a search scores is the model llama.cpp (or transformers' GGUF loader) reads back. Each row of
a weight [out, in] (an embedding table: [tokens, dim]) is cut into blocks of 32 consecutive inputs
(`in` must be a multiple of 32); per block, with x its 32 float32 values and all arithmetic in float32, as
`gguf.quants` (the reference implementation of ggml's quantizers in Python) computes it:

  Q4_0  m = the value of largest |x| (the first one on ties, keeping its sign); d = m / -8; id = 1/d (0 when
        d = 0); u = clamp(trunc(x * id + 8.5), 0, 15); value = fp16(d) * (u - 8). Symmetric, 16 levels
        [-8, 7]: the extreme value lands exactly on -8 (so -8 * d = m), the opposite end gets 7.
  Q5_0  the same with d = m / -16, u = clamp(trunc(x * id + 16.5), 0, 31); value = fp16(d) * (u - 16).
  Q8_0  d = max|x| / 127; q = x * id rounded half away from zero; value = fp16(d) * q, q in [-127, 127].
  Q4_1  lo = min x, hi = max x (no clamping to 0); d = (hi - lo) / 15; u = clamp(trunc((x - lo) * id + 0.5),
        0, 15); value = fp16(d) * u + fp16(lo). A float minimum, not an integer zero point: 0.0 is on the
        grid only by chance.
  Q5_1  the same with 31 levels: d = (hi - lo) / 31, u in [0, 31].

The integers are rounded with the float32 d, the stored scale is fp16(d) (and fp16(lo)): that is what ggml
writes, so RTN here gives the bytes `gguf.quants.quantize` gives (tests/policies/test_ggml.py checks it).
Dequantized values are float32 products of fp16 scales and small integers, exact in float32, plus one
rounding for the minimum of the *_1 types, exactly as `gguf.quants.dequantize` (which transformers' GGUF
loader uses) computes them.

`GgmlRule` is the same grid for GPTQ (`quantize.quantize_gptq(rule=...)`): block parameters from the
weights, each column rounded with them. The recorded `QuantGrid` of a ggml layer has `gguf_type`, scale
fp16(d), zero all 0 and `minimum` fp16(lo) for the *_1 types; `ggml_codes` recovers the integers a writer
packs (`export/gguf_blocks.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autocompress.plan import GGUF_BLOCK as BLOCK, GGUF_TYPES, gguf_type_of  # noqa: F401  (re-exported)


def levels(gguf_type: str) -> int:
    """The largest stored integer u (15 for 4 bits, 31 for 5, 127 for Q8_0's |q|)."""
    bits, _ = GGUF_TYPES[gguf_type]
    return 127 if gguf_type == "Q8_0" else 2 ** bits - 1


@dataclass(frozen=True)
class BlockParams:
    """Per block, [out, blocks] float32: d and 1/d as ggml rounds with them, lo the block minimum (*_1
    types, else 0); d16 = fp16(d) and m16 = fp16(lo) as stored."""

    d: torch.Tensor
    inv: torch.Tensor
    lo: torch.Tensor
    d16: torch.Tensor
    m16: torch.Tensor

    def column(self, g: int) -> "BlockParams":
        """The parameters of block column `g`, each [out]."""
        return BlockParams(*(t[:, g] for t in (self.d, self.inv, self.lo, self.d16, self.m16)))


def _blocks(w: torch.Tensor) -> torch.Tensor:
    out_f, in_f = w.shape
    if in_f % BLOCK:
        raise ValueError(f"a ggml block grid needs a multiple of {BLOCK} inputs per row, got {in_f}")
    return w.detach().float().reshape(out_f, in_f // BLOCK, BLOCK)


def _half(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).float()


def block_params(w: torch.Tensor, gguf_type: str) -> BlockParams:
    """The ggml parameters of every block of `w` [out, in] (see the module docstring)."""
    x = _blocks(w)
    if gguf_type in ("Q4_0", "Q5_0"):
        signed = x.gather(-1, x.abs().argmax(-1, keepdim=True)).squeeze(-1)  # first largest |x|, with sign
        d = signed / (-8.0 if gguf_type == "Q4_0" else -16.0)
        lo = torch.zeros_like(d)
    elif gguf_type == "Q8_0":
        d = x.abs().amax(-1) / 127.0
        lo = torch.zeros_like(d)
    else:
        lo = x.amin(-1)
        d = (x.amax(-1) - lo) / float(levels(gguf_type))
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    m16 = _half(lo) if gguf_type in ("Q4_1", "Q5_1") else torch.zeros_like(d)
    return BlockParams(d, inv, lo, _half(d), m16)


def _round_away(n: torch.Tensor) -> torch.Tensor:
    """gguf.quants.np_roundf: round half away from zero, with its float32 steps."""
    a = n.abs()
    floored = a.floor()
    return n.sign() * (floored + (2 * (a - floored)).floor())


def stored_ints(x: torch.Tensor, p: BlockParams, gguf_type: str) -> torch.Tensor:
    """The integers ggml stores for float32 values `x` (any shape that broadcasts against `p`'s tensors):
    u in [0, levels] for Q4/Q5 types, signed q in [-127, 127] for Q8_0. Clamped, so values outside a block's
    range (GPTQ's updated columns) land on its ends."""
    top = float(levels(gguf_type))
    if gguf_type == "Q8_0":
        return _round_away(x * p.inv).clamp(-top, top)
    if gguf_type in ("Q4_0", "Q5_0"):
        return torch.trunc(x * p.inv + (8.5 if gguf_type == "Q4_0" else 16.5)).clamp(0.0, top)
    return torch.trunc((x - p.lo) * p.inv + 0.5).clamp(0.0, top)


def signed(u: torch.Tensor, gguf_type: str) -> torch.Tensor:
    """The signed multiplier of d16 for stored integers `u`: u - 8 (Q4_0), u - 16 (Q5_0), else u."""
    return u - {"Q4_0": 8.0, "Q5_0": 16.0}.get(gguf_type, 0.0)


def values(u: torch.Tensor, d16: torch.Tensor, m16: torch.Tensor, gguf_type: str) -> torch.Tensor:
    """float32 values of stored integers `u` as gguf.quants.dequantize computes them."""
    out = d16 * signed(u, gguf_type)
    return out + m16 if gguf_type in ("Q4_1", "Q5_1") else out


def _expand(t: torch.Tensor) -> torch.Tensor:
    return t.repeat_interleave(BLOCK, dim=1)


def fake_quantize(w: torch.Tensor, p: BlockParams, gguf_type: str) -> torch.Tensor:
    """float32 [out, in]: every weight of `w` on the grid of `p` (RTN when `p = block_params(w, ...)`)."""
    e = BlockParams(*(_expand(t) for t in (p.d, p.inv, p.lo, p.d16, p.m16)))
    return values(stored_ints(w.detach().float(), e, gguf_type), e.d16, e.m16, gguf_type)


def grid_of(p: BlockParams, gguf_type: str):
    """The `QuantGrid` recorded for a layer on these block parameters (module docstring)."""
    from autocompress.policies.quantize import QuantGrid

    bits, sym = GGUF_TYPES[gguf_type]
    return QuantGrid(bits, BLOCK, sym, p.d16.clone(), torch.zeros_like(p.d16), gguf_type=gguf_type,
                     minimum=None if sym else p.m16.clone())


def quantize_rtn_ggml(w: torch.Tensor, gguf_type: str):
    """Round-to-nearest as ggml does it: (fake-quantized w in w's dtype, its QuantGrid)."""
    p = block_params(w, gguf_type)
    return fake_quantize(w, p, gguf_type).to(w.dtype), grid_of(p, gguf_type)


def ggml_codes(w: torch.Tensor, grid) -> torch.Tensor:
    """The stored integers (int32 [out, in]; see `stored_ints`) of a weight already on `grid` (a ggml
    `QuantGrid`): exact, since each value is d16 times a small integer (plus m16)."""
    d16 = _expand(grid.scale)
    x = w.detach().float() - (_expand(grid.minimum) if grid.minimum is not None else 0.0)
    q = torch.where(d16 == 0, torch.zeros_like(x), torch.round(x / torch.where(d16 == 0, 1.0, d16)))
    return (q + {"Q4_0": 8.0, "Q5_0": 16.0}.get(grid.gguf_type, 0.0)).to(torch.int32)


def ggml_dequantize(codes: torch.Tensor, grid) -> torch.Tensor:
    """float32 values of stored integers `codes` on a ggml `grid` (the inverse of `ggml_codes`)."""
    m16 = _expand(grid.minimum) if grid.minimum is not None else torch.zeros_like(codes, dtype=torch.float32)
    return values(codes.float(), _expand(grid.scale), m16, grid.gguf_type)


class GgmlRule:
    """The ggml grid as `quantize_gptq`'s rounding rule: `params(W)` the block parameters of a weight (or of
    one block's columns), `fake(x, params, g)` one column on block column g, `returned(params)` the grid."""

    def __init__(self, gguf_type: str) -> None:
        self.gguf_type = gguf_type
        self.keeps_zeros = False  # 0.0 is not on a *_1 block's grid; gguf_type layers are never pruned

    def params(self, w: torch.Tensor, whole: bool = False) -> BlockParams:
        return block_params(w, self.gguf_type)  # one block per 32 columns: a whole group is one block

    def fake(self, x: torch.Tensor, p: BlockParams, g: int) -> torch.Tensor:
        c = p.column(g)
        return values(stored_ints(x, c, self.gguf_type), c.d16, c.m16, self.gguf_type)

    def assign(self, p: BlockParams, g: int, one: BlockParams) -> None:
        """Set block column g of `p` from `one` (the parameters of that block alone, [out, 1])."""
        for mine, new in zip((p.d, p.inv, p.lo, p.d16, p.m16), (one.d, one.inv, one.lo, one.d16, one.m16)):
            mine[:, g] = new[:, 0]

    def empty(self, out_f: int, blocks: int) -> BlockParams:
        return BlockParams(*(torch.zeros(out_f, blocks) for _ in range(5)))

    def returned(self, p: BlockParams) -> tuple:
        return (grid_of(p, self.gguf_type),)
