"""What a kernel call costs inside the whole model beyond its table price (`call_overhead_ms`).

The table times each GEMM's kernel module alone. Inside a model the same call costs more or less than that:
caches, the weight copies the table cycles through, and dispatch behave differently when a module sits between a
norm and a residual add, and an int8 activation hook in front of a layer runs in Python, which the roofline's
count of element-wise launches underprices. Priced from isolated timings alone, random plans on SmolLM2 decode
were predicted 7-12% faster than they measured (see docs/latency.md).

`measure_call_overheads` measures that difference per format, on the whole model, at the workload being
calibrated. For each weight format with a real kernel here, a uniform plan (every Linear in that format, in the
first layout its kernel takes) is timed INTERLEAVED with the dense model (dense call, plan call, ...; another
process slowing the machine slows both calls of a pair alike) and the median of the pairs' ratios is compared
with the table's predicted ratio:

    overhead[fmt] = (measured ratio - predicted ratio) x predicted dense ms / calls of fmt's kernel in the plan

"act_quant" is measured the same way from a weight-only plan below 8 bits (4-bit) with int8 activations (the activation hook
in front of every kernel), with the 4-bit kernels' own overhead already counted. The table model adds
`overhead[fmt]` to every GEMM that runs `fmt`'s kernel, and `overhead["act_quant"]` to every activation
fake-quantization, in calls of that workload mode. A format without calls in its uniform plan (no layer the
kernel takes) is left out.
"""

from __future__ import annotations

import statistics
from typing import Callable

import torch
from torch import nn

from autocompress.evaluators.latency._base import Workload, plan_ops
from autocompress.evaluators.latency.kernels import build_real_model
from autocompress.hardware.profile import DeviceProfile, Kernel
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan, LayerPlan

ACT_QUANT = "act_quant"
WARMUP_PAIRS = 3


def uniform_plan(info: ModelInfo, fmt: str, kernel: Kernel, act_bits: int | None = None) -> CompressionPlan:
    """Every Linear of `info` in weight format `fmt` ("w8a8", "w8", "w4", or a sparsity pattern such as "2:4"),
    in the first layout `kernel` takes: one scale per output channel where it takes that, else its smallest
    group size. A pattern format prunes every Linear to that N:M pattern (magnitude) and keeps it dense."""
    if ":" in fmt:  # LayerPlan derives the sparsity (1 - N/M) from the pattern
        entry = LayerPlan(bits=None, pattern=fmt, act_bits=act_bits)
        return CompressionPlan({name: entry for name in info.layers})
    bits = 8 if fmt in ("w8a8", "w8") else int(fmt[1:])
    group = None if kernel.per_channel or not kernel.groups else min(kernel.groups)
    act = 8 if fmt == "w8a8" else act_bits
    return CompressionPlan({name: LayerPlan(bits=bits, group_size=group, act_bits=act) for name in info.layers})


def kernel_calls(table, plan: CompressionPlan, info: ModelInfo, workload: Workload, fmt: str) -> int:
    """How many GEMMs of `plan` run `fmt`'s kernel under the table model `table` (`ACT_QUANT`: how many
    activation fake-quantizations the plan has)."""
    ops = plan_ops(plan, info, workload)
    if fmt == ACT_QUANT:
        return sum(op.kind == "act_quant" for op in ops)
    return sum(op.kind == "gemm" and op.fmt == fmt and table.runs_kernel(op) for op in ops)


def interleaved_ratio(anchor: Callable[[], float], step: Callable[[], float], pairs: int) -> float:
    """The median of `pairs` ratios step ms / anchor ms, the two called alternately (after a warm-up)."""
    ratios = []
    with torch.inference_mode():
        for i in range(WARMUP_PAIRS + pairs):
            a, p = anchor(), step()
            if i >= WARMUP_PAIRS:
                ratios.append(p / a)
    return statistics.median(ratios)


def measure_call_overheads(base_model: nn.Module, info: ModelInfo, device: str, workload: Workload,
                           profile: DeviceProfile, kernels: dict[str, Kernel], pairs: int = 20,
                           report: Callable[[str], None] | None = None) -> dict[str, float]:
    """Milliseconds per call that each format of `kernels` (and `ACT_QUANT`) costs inside `base_model` at
    `workload` beyond `profile`'s table price (see the module docstring; may be negative). `profile` must
    already hold the table and this workload's rest_scale; `base_model` is left untouched."""
    from autocompress.evaluators.latency.measured import model_step
    from autocompress.evaluators.latency.table import TableLatency

    dense = build_real_model(base_model, CompressionPlan({}), device)
    anchor = model_step(dense, workload, device)
    overheads: dict[str, float] = {}
    plans = [(fmt, uniform_plan(info, fmt, k)) for fmt, k in kernels.items()]
    hookable = [(f, k) for f, k in kernels.items() if f not in ("w8a8", "w8")]  # 8-bit + int8 activations is w8a8
    if hookable:  # the activation hook in front of a weight-only kernel, measured last
        fmt, kernel = hookable[0]
        plans.append((ACT_QUANT, uniform_plan(info, fmt, kernel, act_bits=8)))
    for fmt, plan in plans:
        model_now = TableLatency(profile, call_overhead_ms=overheads)
        calls = kernel_calls(model_now, plan, info, workload, fmt)
        if not calls:
            continue
        if report:
            report(f"in-model cost of {fmt} ({calls} calls)")
        model = build_real_model(base_model, plan, device)
        try:
            measured = interleaved_ratio(anchor, model_step(model, workload, device), pairs)
        finally:
            del model
        dense_ms = model_now.predict(CompressionPlan({}), info, workload).total_ms
        predicted = model_now.predict(plan, info, workload).total_ms / dense_ms
        overheads[fmt] = float(f"{(measured - predicted) * dense_ms / calls:.4g}")
    return overheads
