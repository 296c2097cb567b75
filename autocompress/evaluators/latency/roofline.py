"""The roofline: each operator takes max(compute / achievable peak, bytes / achievable bandwidth) plus the
device's per-launch overhead (Williams, Waterman, Patterson, "Roofline", CACM 2009).

Formats follow the profile's kernel table: a format with a fast kernel runs in its own compute type and
moves its own weight bytes (bits / 8 per weight, plus an fp16 scale per 128 weights); a format without one
runs dense (dequantized at load) or, with `fallback: dequant`, dense plus a pass over the packed and the
dequantized weights on every call. Non-GEMM operators are scaled by the profile's calibrated `rest_scale`.
"""

from __future__ import annotations

from autocompress.evaluators.latency._base import (LATENCY_MODELS, LatencyModel, LatencyReport, Op, OpLatency,
                                                   Workload, plan_ops)
from autocompress.hardware.profile import DeviceProfile
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan

DTYPE_BYTES = {"fp32": 4.0, "tf32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "fp8": 1.0}
SCALE_BYTES_PER_WEIGHT = 2.0 / 128  # one fp16 scale per group of 128


def _weight_bytes_per_value(fmt: str, profile: DeviceProfile) -> float:
    if fmt == "w8a8":
        return 1.0 + SCALE_BYTES_PER_WEIGHT
    if fmt.startswith("w"):
        return int(fmt[1:]) / 8 + SCALE_BYTES_PER_WEIGHT
    if fmt == "2:4":
        return DTYPE_BYTES[profile.dtype] / 2 + 0.25 / 2  # half the values, 2-bit indices for those kept
    return DTYPE_BYTES[profile.dtype]


def op_time(op: Op, profile: DeviceProfile) -> tuple[float, str]:
    """(milliseconds, bottleneck) of one operator on `profile`."""
    a = DTYPE_BYTES[profile.dtype]
    bw = profile.bandwidth_gbs * 1e9 * profile.efficiency.memory
    launch = profile.overhead_us * 1e-6 * op.kernels
    rest = profile.calibration.rest_scale if profile.calibration else 1.0
    if op.kind == "gemm":
        kernel = profile.kernel(op.fmt)
        weights = float(op.k * op.n)
        if kernel.fast:
            compute = kernel.compute or profile.dtype
            flops = op.gemm_flops / kernel.compute_speedup
            bytes_ = weights * _weight_bytes_per_value(op.fmt, profile)
        else:
            compute, flops, bytes_ = profile.dtype, op.gemm_flops, weights * a
            if kernel.fallback == "dequant":
                bytes_ += weights * (_weight_bytes_per_value(op.fmt, profile) + a)
        bytes_ += (op.m * op.k + op.m * op.n) * a
        t_compute = flops / (profile.peak(compute) * 1e12 * profile.efficiency.compute)
        scale = 1.0
    else:
        t_compute = op.flops / (profile.peak(profile.dtype) * 1e12 * profile.efficiency.compute)
        bytes_ = op.elements * a * 2
        scale = rest
    t_memory = bytes_ / bw
    body = max(t_compute, t_memory)
    bottleneck = "overhead" if launch > body else ("compute" if t_compute >= t_memory else "memory")
    return (body + launch) * 1e3 * scale, bottleneck


@LATENCY_MODELS.register("roofline")
class RooflineLatency(LatencyModel):
    """Analytic: the profile's peaks (spec sheet, or measured by `autocompress latency calibrate`)."""

    name = "roofline"

    def predict(self, plan: CompressionPlan, info: ModelInfo, workload: Workload) -> LatencyReport:
        ops = [OpLatency(op, *op_time(op, self.profile)) for op in plan_ops(plan, info, workload)]
        return LatencyReport(sum(o.ms for o in ops), ops, model=self.name)
