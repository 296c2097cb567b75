"""The roofline: each operator takes max(compute / achievable peak, bytes / achievable bandwidth) plus the
device's per-launch overhead (Williams, Waterman, Patterson, "Roofline", CACM 2009).

Formats follow the profile's kernel table, layer by layer (`DeviceProfile.kernel_for`: a kernel runs only the
weight layouts it takes): a format with a fast kernel runs in its own compute type and moves its own weight
bytes (bits / 8 per weight, plus `SCALE_BYTES_PER_GROUP` per group of `group_size` inputs, or per output row);
a format without one runs dense (dequantized at load) or, with `fallback: dequant`, dense plus a pass over the
packed and the dequantized weights on every call. Non-GEMM operators (except an activation quantization, whose
launches are counted) are scaled by the profile's calibrated `rest_scale` of the workload's mode, except a
decode step's KV-cache reads (`kv_cache` operators): their bytes (at the plan's `kv_cache` bits plus scales, or
in the device dtype) over the bandwidth, unscaled and with no launch of their own.
"""

from __future__ import annotations

from autocompress.evaluators.latency._base import (LATENCY_MODELS, LatencyModel, LatencyReport, Op, OpLatency,
                                                   Workload, plan_ops)
from autocompress.hardware.profile import DTYPE_BYTES, DeviceProfile
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan

__all__ = ["DTYPE_BYTES", "RooflineLatency", "op_time", "weight_bytes_per_value"]

# one 16-bit scale and one 16-bit offset per group (torch's int4 CPU kernel keeps both in the activations'
# dtype); a float32 scale per output row (the int8 kernels) is the same 4 bytes per group of in_features
SCALE_BYTES_PER_GROUP = 4.0


def weight_bytes_per_value(fmt: str, profile: DeviceProfile, group_size: int | None, k: int) -> float:
    """Bytes per weight of `fmt` as its kernel reads them, for a layer of `k` inputs: integers plus their scales
    (one per `group_size` inputs; None: one per output row); 2:4 keeps half the values plus 2-bit indices."""
    if fmt.startswith("w"):
        bits = 8 if fmt == "w8a8" else int(fmt[1:])
        per_scale = k if group_size is None else min(group_size, k)
        return bits / 8 + SCALE_BYTES_PER_GROUP / max(per_scale, 1)
    if fmt == "2:4":
        return DTYPE_BYTES[profile.dtype] / 2 + 0.25 / 2  # half the values, 2-bit indices for those kept
    return DTYPE_BYTES[profile.dtype]


def op_time(op: Op, profile: DeviceProfile, mode: str = "prefill") -> tuple[float, str]:
    """(milliseconds, bottleneck) of one operator on `profile`, in a call of workload mode `mode`."""
    a = DTYPE_BYTES[profile.dtype]
    bw = profile.bandwidth_gbs * 1e9 * profile.efficiency.memory
    launch = profile.overhead_us * 1e-6 * op.kernels
    rest = profile.calibration.rest_scale(mode) if profile.calibration else 1.0
    if op.kind == "gemm":
        kernel = profile.kernel_for(op.fmt, op.group_size, op.k, op.n)
        weights = float(op.k * op.n)
        if kernel.fast:
            compute = kernel.compute or profile.dtype
            flops = op.gemm_flops / kernel.compute_speedup
            bytes_ = weights * weight_bytes_per_value(op.fmt, profile, op.group_size, op.k)
        else:
            compute, flops, bytes_ = profile.dtype, op.gemm_flops, weights * a
            if kernel.fallback == "dequant":
                bytes_ += weights * (weight_bytes_per_value(op.fmt, profile, op.group_size, op.k) + a)
        bytes_ += (op.m * op.k + op.m * op.n) * a
        t_compute = flops / (profile.peak(compute) * 1e12 * profile.efficiency.compute)
        scale = 1.0
    elif op.kind == "kv_cache":  # read by the attention kernel: its bytes over the bandwidth, counted, not scaled
        t_compute, scale = 0.0, 1.0
        bytes_ = op.elements * (a if op.cache_bits is None else op.cache_bits / 8)
    else:
        t_compute = op.flops / (profile.peak(profile.dtype) * 1e12 * profile.efficiency.compute)
        bytes_ = op.elements * a * 2
        scale = 1.0 if op.kind == "act_quant" else rest  # its launches are counted, the others' estimated
    t_memory = bytes_ / bw
    body = max(t_compute, t_memory)
    bottleneck = "overhead" if launch > body else ("compute" if t_compute >= t_memory else "memory")
    return (body + launch) * 1e3 * scale, bottleneck


@LATENCY_MODELS.register("roofline")
class RooflineLatency(LatencyModel):
    """Analytic: the profile's peaks (spec sheet, or measured by `autocompress latency calibrate`)."""

    name = "roofline"

    def predict(self, plan: CompressionPlan, info: ModelInfo, workload: Workload) -> LatencyReport:
        ops = [OpLatency(op, *op_time(op, self.profile, workload.mode)) for op in plan_ops(plan, info, workload)]
        return LatencyReport(sum(o.ms for o in ops), ops, model=self.name)
