"""Real CPU kernels for packed layers: the loaded model runs these instead of a dequantized float Linear.

  w8a8  bits 8, one scale per output channel, symmetric, act_bits 8: torch's dynamic int8 Linear
        (`dynamic_int8_linear`) holding exactly the exported integers and scales. It quantizes its
        input per tensor (asymmetric uint8, 7 bits on x86); `W8A8Linear` scales each token to absmax 1 first
        (and the output back), which makes that per token, as the search's fake quantization is: on MiniLM,
        uniform W8A8 fidelity 0.9954 against 0.9975 fake-quantized, where the plain per-tensor call gave 0.975.
        A smoothed layer's kernel (`smooth`, policies/smooth.py) divides its input by s first.
  int8  bits 8, one scale per output channel, without int8 activations (or on an asymmetric grid), in_features
        a multiple of 16 (other widths make the op read past each row): `torch._weight_int8pack_mm` (x @ q^T, then
        times the float32 scales). An asymmetric grid runs as
        q - 128 plus the per-row offset (128 - zero) * scale times sum(x).
  int4  bits 4, group_size 32/64/128/256 dividing in_features, out_features a multiple of 16 (what the packing
        op takes): `aten._weight_int4pack_mm_for_cpu`, which computes w = (u - 8) * scale + offset per group
        from 4-bit u: symmetric q is stored as u = q + 8 with offset 0, asymmetric q as u = q with offset
        (8 - zero) * scale.
The weight-only kernels run with bfloat16 activations (`KERNEL_DTYPE`): torch vectorizes them for bfloat16
only; their float32 path is a scalar loop, 10-30x slower than a dense Linear. So int8 rounds its input and its
raw output to bfloat16 (its scales stay float32, applied afterwards) and int4 also takes its per-group scales
and offsets in bfloat16. Each kernel module takes any leading dimensions and returns the input's dtype: a
drop-in replacement for an nn.Linear or GPT-2 Conv1D of the same function. A layer with act_bits 8 whose kernel
is not w8a8 keeps the int8 activation hook in front of its kernel. Everything else (other bit widths, other
group sizes, sparsity without 8-bit per-channel or 4-bit group-wise integers) runs dequantized.

Which layer runs which kernel is one rule (`cpu_kernel`): the profile kernel entries `CPU_KERNELS` say which
weight layouts each kernel takes (`Kernel.takes`). `autocompress latency calibrate` writes these entries into
the profile it measures, and the latency models decide with the same `Kernel.takes`, so they price exactly the
layers this module runs with a kernel.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from autocompress.hardware.profile import Kernel, format_of
from autocompress.policies.quantize import QuantGrid, dequantize

INT4_GROUPS = (32, 64, 128, 256)
# torch's CPU int8/int4 weight-only kernels are vectorized for bfloat16 activations only; their float32 path
# is a scalar reference loop, 10-30x slower than a dense float32 Linear
KERNEL_DTYPE = torch.bfloat16


@functools.cache
def has_kernel(kind: str) -> bool:
    """Whether torch here runs `kind` ("w8a8", "int8", "int4") on the CPU (probed once on a tiny layer)."""
    try:
        q = torch.randint(-7, 8, (16, 64), dtype=torch.int32)
        groups = 2 if kind == "int4" else 1
        grid = QuantGrid(4 if kind == "int4" else 8, 32 if kind == "int4" else None, True,
                         torch.ones(16, groups), torch.zeros(16, groups))
        x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
        out = kernel_module(q, grid, None, kind)(x)
        ref = x @ dequantize(q, grid.scale, grid.zero, grid.group_size).T
        return bool((out - ref).norm() <= 0.05 * ref.norm())
    except Exception:  # noqa: BLE001  (an op missing from this torch build, or one that refuses to run)
        return False


# the layouts the real CPU kernels take, as device-profile kernel entries (format -> Kernel), and the kernel
# module kind of each format; the weight-only kernels compute with bfloat16 activations
CPU_KERNELS: dict[str, Kernel] = {
    "w8a8": Kernel(fast=True, compute="int8", per_channel=True,
                   note="torch.ao dynamic int8 Linear fed per token (export.kernels.W8A8Linear), measured in the "
                        "table"),
    # in_multiple 16: `_weight_int8pack_mm` reads in_features in blocks of 16; other widths read past the row
    # (wrong values for one token, a crash for several: torch 2.13 on an AVX-512 CPU)
    "w8": Kernel(fast=True, compute="bf16", per_channel=True, in_multiple=16,
                 note="torch._weight_int8pack_mm, bfloat16 activations (export.kernels.Int8WeightOnlyLinear), "
                      "measured in the table"),
    "w4": Kernel(fast=True, compute="bf16", per_channel=False, groups=INT4_GROUPS, out_multiple=16,
                 note="aten._weight_int4pack_mm_for_cpu, bfloat16 activations (export.kernels.Int4WeightOnlyLinear), "
                      "measured in the table per group size"),
}
KIND_OF_FORMAT = {"w8a8": "w8a8", "w8": "int8", "w4": "int4"}


def cpu_kernel(bits: int | None, group_size: int | None, symmetric: bool, act_bits: int | None,
               shape: tuple[int, int]) -> str | None:
    """The real CPU kernel ("w8a8", "int8", "int4") for a weight [out, in] = `shape` with `bits` integers in
    groups of `group_size` inputs (None: one scale per output channel), or None (runs dequantized): the
    format's entry in `CPU_KERNELS` must take the layout (`Kernel.takes`) and torch here must have the kernel.
    Without the w8a8 kernel, W8A8 weights run the int8 weight-only kernel (the activation hook in front)."""
    out_features, in_features = shape
    fmt = format_of(bits, act_bits, None, symmetric)
    if fmt == "w8a8" and not has_kernel("w8a8"):
        fmt = "w8"
    kernel = CPU_KERNELS.get(fmt)
    if kernel is None or not kernel.takes(group_size, in_features, out_features):
        return None
    return KIND_OF_FORMAT[fmt] if has_kernel(KIND_OF_FORMAT[fmt]) else None


def kernel_kind(grid: QuantGrid, shape: tuple[int, int], act_bits: int | None) -> str | None:
    """The kernel for a weight [out, in] = `shape` on `grid`, or None (runs dequantized): `cpu_kernel`."""
    return cpu_kernel(grid.bits, grid.group_size, grid.symmetric, act_bits, shape)


class _Kernel(nn.Module):
    """Shared reshaping: [..., in] -> 2-D `compute_dtype` -> `_mm` (float32) -> + bias -> [..., out] in the
    input's dtype."""

    def __init__(self, out_features: int, in_features: int, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features, self.compute_dtype = in_features, out_features, compute_dtype
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype).contiguous()
        y = self._mm(x2)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Int8WeightOnlyLinear(_Kernel):
    """int8 weights [out, in] through `torch._weight_int8pack_mm` with unit scales; the float32 per-row scale
    (and, for an asymmetric grid, the per-row offset times sum(x)) is applied to the float32 result, so the
    weights are exactly the exported grid."""

    def __init__(self, q: torch.Tensor, grid: QuantGrid, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__(q.shape[0], q.shape[1], bias, compute_dtype)
        scale = grid.scale[:, 0].float()
        shift = 0 if grid.symmetric else 128
        self.register_buffer("weight_int8", (q - shift).to(torch.int8).contiguous())
        self.register_buffer("ones", torch.ones(q.shape[0], dtype=compute_dtype))
        self.register_buffer("scales", scale.contiguous())
        self.register_buffer("offset", None if grid.symmetric else ((shift - grid.zero[:, 0]) * scale).contiguous())

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int8pack_mm(x, self.weight_int8, self.ones).float() * self.scales
        if self.offset is not None:
            y = y + x.float().sum(-1, keepdim=True) * self.offset
        return y


class Int4WeightOnlyLinear(_Kernel):
    """4-bit weights packed by `_convert_weight_to_int4pack_for_cpu`, per-group (scale, offset) in
    `compute_dtype` (the kernel takes them in the activations' dtype)."""

    def __init__(self, q: torch.Tensor, grid: QuantGrid, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__(q.shape[0], q.shape[1], bias, compute_dtype)
        self.group_size = grid.group_size
        scale = grid.scale.float()
        if grid.symmetric:
            u, offset = q + 8, torch.zeros_like(scale)
        else:
            u, offset = q, (8 - grid.zero) * scale
        self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            u.to(torch.int32).contiguous(), 1))
        self.register_buffer("scales_and_zeros",
                             torch.stack([scale.T, offset.T], dim=-1).to(compute_dtype).contiguous())

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight_int4, self.group_size,
                                                          self.scales_and_zeros).float()


class W8A8Linear(nn.Module):
    """torch's dynamic int8 Linear (built by `dynamic_int8_linear`, then given exactly the integers `q` and scales of
    `grid`: symmetric, one scale per output row) fed per-token: each token is divided by its absmax before the
    kernel and its output row multiplied back, so the kernel's per-tensor uint8 quantization of that input
    is a per-token one, like the search's int8 fake quantization. `reduce_range` is passed to the kernel:
    True (torch's default on x86) quantizes to 7 bits, which rules out int16 overflow on CPUs without VNNI;
    False uses all 8 bits and may saturate there. The bias is added in float32 after the kernel. With `smooth`
    (a SmoothQuant vector s [in], the weights `q` already multiplied by it) the input is divided by s before
    the per-token scaling."""

    def __init__(self, q: torch.Tensor, grid: QuantGrid, bias: torch.Tensor | None,
                 reduce_range: bool = True, smooth: torch.Tensor | None = None) -> None:
        from autocompress.evaluators.latency.kernels import dynamic_int8_linear

        super().__init__()
        self.out_features, self.in_features = q.shape
        self.reduce_range = reduce_range
        lin = nn.Linear(self.in_features, self.out_features, bias=False)
        with torch.no_grad():
            lin.weight.copy_(dequantize(q, grid.scale, grid.zero, grid.group_size))
        self.inner = dynamic_int8_linear(lin)
        qweight = torch._make_per_channel_quantized_tensor(
            q.to(torch.int8), grid.scale[:, 0].double(), torch.zeros(self.out_features, dtype=torch.long), 0)
        self.inner.set_weight_bias(qweight, None)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("smooth", None if smooth is None else smooth.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float()
        if self.smooth is not None:
            x2 = x2 / self.smooth
        s = x2.abs().amax(-1, keepdim=True)
        s = torch.where(s > 0, s, torch.ones_like(s))
        y = torch.ops.quantized.linear_dynamic((x2 / s).contiguous(), self.inner._packed_params._packed_params,
                                               reduce_range=self.reduce_range) * s
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


KERNELS = {"w8a8": W8A8Linear, "int8": Int8WeightOnlyLinear, "int4": Int4WeightOnlyLinear}


def kernel_module(q: torch.Tensor, grid: QuantGrid, bias: torch.Tensor | None, kind: str,
                  smooth: torch.Tensor | None = None) -> nn.Module:
    """The `kind` kernel module computing x @ dequantize(q, grid)^T + bias (up to its rounding); the
    weight-only kernels compute in `KERNEL_DTYPE`. `smooth` (w8a8 only): (x / smooth) @ dequantize(q, grid)^T."""
    if kind == "w8a8":
        return W8A8Linear(q, grid, bias, smooth=smooth)
    if smooth is not None:
        raise ValueError(f"the {kind} kernel takes no smoothing vector; put a smoothing hook in front of it")
    return KERNELS[kind](q, grid, bias, KERNEL_DTYPE)
