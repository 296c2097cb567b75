"""Bit packing primitives of the packed export format.

Bit stream: `n` unsigned integers of `b` bits (1 <= b <= 8) are laid end to end, value i in bits
[i*b, (i+1)*b) of the stream, least significant bit first; stream bit k is bit (k % 8) of byte k // 8. The
stream takes ceil(n * b / 8) bytes (a uint8 tensor); unused high bits of the last byte are 0. So 4-bit
values put value 2k in the low nibble of byte k and value 2k+1 in its high nibble, and 8-bit values are the
bytes themselves.

Bitmask: one bit per weight of a row-major [rows, cols] mask (1 = kept), the stream above with b = 1.
N:M index: the position (0..M-1) of every kept value inside its group of M, ceil(log2 M) bits each.

All functions are vectorized torch (no Python loop over values) and work on CPU tensors.
"""

from __future__ import annotations

import torch


def _check(bits: int) -> None:
    if type(bits) is not int or not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r}: packing takes 1..8 bits per value")


def packed_len(n: int, bits: int) -> int:
    """Bytes of `n` values of `bits` bits: ceil(n * bits / 8)."""
    return -(-n * bits // 8)


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack the integers `values` (any shape, read flattened; each in 0..2^bits-1) into the bit stream of
    the module docstring: uint8 [ceil(n * bits / 8)]. Raises ValueError for a value out of range."""
    _check(bits)
    v = values.detach().reshape(-1).cpu()
    n = v.numel()
    if n and (int(v.min()) < 0 or int(v.max()) >= 2 ** bits):
        raise ValueError(f"values must lie in 0..{2 ** bits - 1} to pack at {bits} bits; "
                         f"got {int(v.min())}..{int(v.max())}")
    if bits == 8:
        return v.to(torch.uint8).clone()
    if bits == 4:
        u = v.to(torch.uint8)
        if n % 2:
            u = torch.cat([u, u.new_zeros(1)])
        return u[0::2] | (u[1::2] << 4)
    # generic: 8 values of b bits make one word of 8*b <= 56 bits, which is b bytes of the stream
    words = torch.nn.functional.pad(v.to(torch.int64), (0, -n % 8)).reshape(-1, 8)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    word = (words << shifts).sum(1)
    out = (word[:, None] >> (torch.arange(bits, dtype=torch.int64) * 8)) & 0xFF
    return out.to(torch.uint8).reshape(-1)[:packed_len(n, bits)].clone()


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The `n` integers of `bits` bits held in the stream `packed` (uint8), as int32 [n]. Raises ValueError
    if `packed` is not exactly ceil(n * bits / 8) bytes."""
    _check(bits)
    p = packed.detach().reshape(-1).cpu()
    if p.dtype != torch.uint8 or p.numel() != packed_len(n, bits):
        raise ValueError(f"a stream of {n} values at {bits} bits is {packed_len(n, bits)} uint8 bytes; "
                         f"got {p.numel()} {p.dtype}")
    if bits == 8:
        return p.to(torch.int32)
    if bits == 4:
        both = torch.stack([p & 0x0F, p >> 4], dim=1).reshape(-1)
        return both[:n].to(torch.int32)
    b = torch.nn.functional.pad(p.to(torch.int64), (0, -p.numel() % bits)).reshape(-1, bits)
    word = (b << (torch.arange(bits, dtype=torch.int64) * 8)).sum(1)
    vals = (word[:, None] >> (torch.arange(8, dtype=torch.int64) * bits)) & (2 ** bits - 1)
    return vals.reshape(-1)[:n].to(torch.int32)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask (any shape, read row-major) as a bit stream of 1 bit per entry: uint8 [ceil(n / 8)]."""
    return pack_bits(mask.reshape(-1).to(torch.uint8), 1)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """The boolean mask of `shape` held in `packed` (the inverse of `pack_mask`)."""
    n = 1
    for d in shape:
        n *= int(d)
    return unpack_bits(packed, 1, n).to(torch.bool).reshape(tuple(shape))


def index_bits(m: int) -> int:
    """Bits per N:M index: ceil(log2 M) (1 for M = 2, 2 for M = 4, 3 for M = 8)."""
    if m < 2:
        raise ValueError(f"N:M needs M >= 2, got {m}")
    return (m - 1).bit_length()


def pack_nm_index(mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The kept positions of an N:M mask [rows, groups * m] (exactly `n` True in every group of `m`),
    row-major, ceil(log2 m) bits each: uint8 [ceil(rows * groups * n * bits / 8)]. ValueError otherwise."""
    rows, cols = mask.shape
    if cols % m:
        raise ValueError(f"an N:M mask must have a multiple of M={m} columns, got {cols}")
    groups = mask.reshape(rows, cols // m, m)
    if groups.numel() and not bool((groups.sum(-1) == n).all()):
        raise ValueError(f"every group of {m} must keep exactly {n} values")
    pos = torch.nonzero(groups.reshape(-1, m))[:, 1]  # row-major, ascending inside each group
    return pack_bits(pos, index_bits(m))


def unpack_nm_index(packed: torch.Tensor, n: int, m: int, rows: int, cols: int) -> torch.Tensor:
    """The boolean N:M mask [rows, cols] (cols a multiple of m) held in `packed` (see `pack_nm_index`)."""
    groups = rows * (cols // m)
    pos = unpack_bits(packed, index_bits(m), groups * n).to(torch.int64).reshape(groups, n)
    if pos.numel() and int(pos.max()) >= m:
        raise ValueError(f"an N:M index {int(pos.max())} is outside its group of {m}")
    mask = torch.zeros(groups, m, dtype=torch.bool).scatter_(1, pos, True)
    if groups and not bool((mask.sum(1) == n).all()):
        raise ValueError(f"an N:M index repeats a position: every group of {m} must keep {n} distinct values")
    return mask.reshape(rows, cols)
