"""The `table` latency model: GEMMs priced from operators measured on the device itself.

`autocompress latency calibrate` times every GEMM shape of a model at a workload, in every kernel format the
device runs (a grouped weight format once per group size its kernel takes; plus the shapes a search produces:
low-rank factors and structurally pruned layers), and stores them in the profile's `table`. This model prices
a GEMM as follows:

  1. exact hit: the (format, group, m, k, n) was measured -> its median time;
  2. otherwise interpolate among the entries of the same format and group (all groups of the format when that
     group has none): piecewise-linear in log(ms) over log(FLOPs)
     (log-log). The points used are the entries with the same token count m when there are at least two
     (a decode GEMM, m = batch, is memory bound and must not be priced off prefill shapes), else all entries of
     the format. Entries with equal FLOPs are pooled (mean of log ms), and the curve is made non-decreasing
     (isotonic, pool-adjacent-violators) so more work never predicts less time despite timing noise.
     Below the smallest measured FLOPs the time stays flat (launch overhead dominates); above the largest it
     grows in proportion to FLOPs (the compute limit). Measured points themselves are always exact (rule 1).
  3. a format with no entries on this profile, or a layer whose weight layout the format's kernel does not
     take (`Kernel.takes`: e.g. 4-bit weights with one scale per output channel on a kernel for groups of
     32..256), runs as the profile's kernel table says it falls back: priced as `dense` entries, plus, for
     `fallback: dequant`, a pass over the packed and dequantized weights at the profile's bandwidth.

Non-GEMM operators (attention core, element-wise work) go to the roofline, which scales them by the
profile's calibrated `rest_scale` of the workload's mode. The bottleneck reported for a GEMM is the roofline's
verdict on it.

In-model cost per call: a GEMM that runs a format's kernel (rule 1 or 2) gets that format's
`call_overhead_ms` of the workload's mode added, and an activation fake-quantization gets "act_quant"'s: what one
call cost inside the whole model beyond its isolated price when the profile was calibrated
(`call_overhead.py`). A call is never priced below MIN_SHARE of its isolated price.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict

from autocompress.errors import UserError
from autocompress.evaluators.latency._base import (LATENCY_MODELS, LatencyModel, LatencyReport, Op, OpLatency,
                                                   Workload, plan_ops)
from autocompress.evaluators.latency.roofline import DTYPE_BYTES, op_time, weight_bytes_per_value
from autocompress.hardware.profile import WEIGHT_FORMATS, DeviceProfile, TableEntry, group_key
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan

MIN_SHARE = 0.1  # an in-model overhead below zero never takes a call under this share of its isolated price
ACT_QUANT = "act_quant"


def _isotonic(ys: list[float], weights: list[float]) -> list[float]:
    """Non-decreasing least-squares fit of `ys` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for y, w in zip(ys, weights):
        blocks.append([y, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            y2, w2, c2 = blocks.pop()
            y1, w1, c1 = blocks[-1]
            blocks[-1] = [(y1 * w1 + y2 * w2) / (w1 + w2), w1 + w2, c1 + c2]
    out: list[float] = []
    for mean, _, count in blocks:
        out += [mean] * count
    return out


class _Curve:
    """log(ms) as a non-decreasing piecewise-linear function of log(FLOPs), from a set of entries."""

    def __init__(self, entries: list[TableEntry]) -> None:
        pooled: dict[float, list[float]] = defaultdict(list)
        for e in entries:
            pooled[math.log(max(2.0 * e.m * e.k * e.n, 1.0))].append(math.log(max(e.ms, 1e-9)))
        self.xs = sorted(pooled)
        ys = [sum(pooled[x]) / len(pooled[x]) for x in self.xs]
        self.ys = _isotonic(ys, [float(len(pooled[x])) for x in self.xs])

    def __call__(self, flops: float) -> float:
        x = math.log(max(flops, 1.0))
        xs, ys = self.xs, self.ys
        if x <= xs[0]:
            return math.exp(ys[0])
        if x >= xs[-1]:
            return math.exp(ys[-1] + (x - xs[-1]))  # time proportional to FLOPs beyond the largest entry
        i = bisect.bisect_right(xs, x)
        t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
        return math.exp(ys[i - 1] + t * (ys[i] - ys[i - 1]))


@LATENCY_MODELS.register("table")
class TableLatency(LatencyModel):
    """GEMMs from the profile's measured table (exact, else log-log interpolation); the rest by roofline."""

    name = "table"

    def __init__(self, profile: DeviceProfile | None, call_overhead_ms: dict[str, float] | None = None) -> None:
        """`call_overhead_ms` replaces the profile's per-call in-model costs for every mode (calibration uses it
        while it measures them); None reads them from the profile's calibration per workload mode."""
        super().__init__(profile)
        self._overhead_override = None if call_overhead_ms is None else dict(call_overhead_ms)
        if profile is None or not profile.table:
            where = f"device profile {profile.name!r}" if profile is not None else "the latency model"
            raise UserError(f"{where} has no measured table for latency model 'table'; calibrate one with "
                            "`autocompress latency calibrate` (or use latency model 'roofline')")
        self._exact = {(e.format, e.group, e.m, e.k, e.n): e.ms for e in profile.table}
        self._by_format: dict[str, list[TableEntry]] = defaultdict(list)
        for e in profile.table:
            self._by_format[e.format].append(e)
        self._curves: dict[tuple[str, str, int | None], _Curve] = {}

    def _curve(self, fmt: str, group: int | None, m: int) -> _Curve:
        entries, pool = [e for e in self._by_format[fmt] if e.group == group], str(group)
        if not entries:  # a group size not measured: the format's other groups
            entries, pool = self._by_format[fmt], "all"
        same_m = [e for e in entries if e.m == m]
        key = (fmt, pool, m if len(same_m) >= 2 else None)
        if key not in self._curves:
            self._curves[key] = _Curve(same_m if key[2] is not None else entries)
        return self._curves[key]

    def runs_kernel(self, op: Op) -> bool:
        """Whether `op` is priced from its own format's entries: the format has entries here and, for integer
        weights, the profile's kernel for it takes the layer's layout (`Kernel.takes`)."""
        if op.fmt not in self._by_format:
            return False
        return op.fmt not in WEIGHT_FORMATS or self.profile.kernel(op.fmt).takes(op.group_size, op.k, op.n)

    def gemm_ms(self, op: Op) -> float:
        """Milliseconds of one GEMM operator (see the module docstring for the rules)."""
        fmt, group, extra_ms = op.fmt, group_key(op.group_size, op.k), 0.0
        if fmt != "dense" and not self.runs_kernel(op):
            kernel = self.profile.kernel(fmt)
            if kernel.fallback == "dequant":
                a = DTYPE_BYTES[self.profile.dtype]
                bw = self.profile.bandwidth_gbs * 1e9 * self.profile.efficiency.memory
                packed = weight_bytes_per_value(fmt, self.profile, op.group_size, op.k)
                extra_ms = float(op.k * op.n) * (packed + a) / bw * 1e3
            fmt, group = "dense", None
        if fmt not in WEIGHT_FORMATS:
            group = None
        hit = self._exact.get((fmt, group, op.m, op.k, op.n))
        if hit is not None:
            return hit + extra_ms
        if fmt not in self._by_format:  # a table without dense entries: nothing to interpolate from
            return op_time(op, self.profile)[0] + extra_ms
        return self._curve(fmt, group, op.m)(op.gemm_flops) + extra_ms

    def call_overheads(self, mode: str) -> dict[str, float]:
        """format -> milliseconds added per call in a call of workload mode `mode` (see the module docstring)."""
        if self._overhead_override is not None:
            return self._overhead_override
        calib = self.profile.calibration
        return calib.call_overheads(mode) if calib is not None else {}

    def op_ms(self, op: Op, mode: str, overheads: dict[str, float]) -> tuple[float, str]:
        """(milliseconds, bottleneck) of one operator in a call of workload mode `mode`."""
        roof_ms, bottleneck = op_time(op, self.profile, mode)
        if op.kind == "gemm":
            ms = self.gemm_ms(op)
            extra = overheads.get(op.fmt, 0.0) if op.fmt != "dense" and self.runs_kernel(op) else 0.0
        else:
            ms, extra = roof_ms, overheads.get(ACT_QUANT, 0.0) if op.kind == "act_quant" else 0.0
        return max(ms + extra, MIN_SHARE * ms), bottleneck

    def predict(self, plan: CompressionPlan, info: ModelInfo, workload: Workload) -> LatencyReport:
        overheads = self.call_overheads(workload.mode)
        ops = [OpLatency(op, *self.op_ms(op, workload.mode, overheads)) for op in plan_ops(plan, info, workload)]
        return LatencyReport(sum(o.ms for o in ops), ops, model=self.name)
