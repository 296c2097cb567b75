"""`PackedEmbedding`: an embedding table that stays packed in memory and dequantizes only the rows it looks up.

What `load_compressed(..., kernels=True)` puts in place of a quantized `nn.Embedding`. Storage (buffers):
  codes   uint8 [rows, ceil(dim / 2)] for bits <= 4 (two values per byte, the even column in the low nibble),
          uint8 [rows, dim] for 5..8 bits; each value is u = q - qmin (so 0..2^bits-1)
  scales  float16 [rows, groups]; zeros  uint8 [rows, groups] (asymmetric grids; absent when symmetric)
A lookup gathers the rows of the ids, unpacks them and returns (u + qmin - zero) * scale in the model's dtype:
exactly the values `dequantize` gives for those rows, so the model computes what the dequantized export
computes, with the table held at about bits/32 of its float32 bytes (MiniLM's 4-bit g32 word table: 6.6 MB
instead of 46.9 MB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.policies.quantize import QuantGrid, qrange


class PackedEmbedding(nn.Module):
    """A drop-in for `nn.Embedding` in inference (no max_norm, no gradients); see the module docstring."""

    def __init__(self, q: torch.Tensor, grid: QuantGrid, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape
        self.bits, self.group_size, self.dtype = grid.bits, grid.group_size, dtype
        self.qmin = qrange(grid.bits, grid.symmetric)[0]
        u = (q.to(torch.int32) - self.qmin).to(torch.uint8)
        if self.nibbles:
            u = F.pad(u, (0, self.embedding_dim % 2))
            u = u[:, 0::2] | (u[:, 1::2] << 4)
        self.register_buffer("codes", u.contiguous())
        self.register_buffer("scales", grid.scale.to(torch.float16))
        self.register_buffer("zeros", None if grid.symmetric else grid.zero.to(torch.uint8))

    @property
    def nibbles(self) -> bool:
        return self.bits <= 4

    @property
    def group_len(self) -> int:
        return self.embedding_dim if self.group_size is None else min(self.group_size, self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.codes[ids]
        if self.nibbles:
            rows = torch.stack([rows & 0x0F, rows >> 4], dim=-1).flatten(-2)[..., :self.embedding_dim]
        values = rows.float() + self.qmin
        if self.zeros is not None:
            values = values - self._per_value(self.zeros[ids].float())
        return (values * self._per_value(self.scales[ids].float())).to(self.dtype)

    def _per_value(self, per_group: torch.Tensor) -> torch.Tensor:
        return per_group.repeat_interleave(self.group_len, dim=-1)[..., :self.embedding_dim]

    def extra_repr(self) -> str:
        group = "per row" if self.group_size is None else f"group {self.group_size}"
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, {group}"
