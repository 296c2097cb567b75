"""Calibrate a device profile on the machine at hand (`autocompress latency calibrate`).

Micro-benchmarks (the table: gemm_table.py), all timed with `time_ms` (warm-up, then the median of repeats):
  table      every distinct GEMM (m, k, n) of the model's dense plan at the workload (prefill: m = batch x
             seq_len, the LM head of a causal LM at m = batch; decode: every GEMM, the LM head included, at
             m = batch), plus the shapes a search produces from them: low-rank factors (rank 1/8, 1/4, 1/2 of
             min(k, n): (m, k, r) and (m, r, n)), structured shrink (n, or k, scaled by 0.5 and 0.75), and, for
             a prefill workload, the base shapes at m = batch (the decode step) - each in every weight layout
             with a real kernel here (`layouts`: dense, and each format of `available_formats`, a grouped one
             once per group size its kernel takes, on the shapes it takes), as `real_linear` of an
             `nn.Linear(k, n)` on an input [m, k] (the packed export's kernel modules on the CPU), cycling
             through enough weight copies to exceed the last-level cache twice (weights come from memory, as
             in the model; timing one hot copy under-priced fp32 layers by up to 20% against whole-model
             timing). Timed in interleaved sweeps, keeping the fastest median (another process taking the
             cores only slows a sweep down); a GEMM slower than a larger one of its layout and m is timed
             again;
  peaks      the best FLOP rate the table achieved, per compute type (the kernel entry's: dense -> the dense
             dtype, w8a8 -> int8, the CPU weight-only kernels -> bf16): the peaks ARE achieved rates, so the
             profile's efficiency is 1.0;
  bandwidth  a copy of a large tensor (256 MB by default) into a preallocated one: bytes read + written / time;
  overhead   a tiny operator (an add of two 8-element tensors);
  call cost  per kernel format (and the int8 activation hook), what one call costs inside the whole model
             beyond its table price: a uniform plan of that format timed interleaved with the dense model
             (`call_overhead.py`);
  rest_scale the whole dense model timed with `measure_model` at the workload (decode: one token against a KV
             cache of seq_len positions), minus the table's GEMMs, over the roofline's estimate of the non-GEMM
             operators (attention, element-wise work): what they really cost here, per workload mode.

`merge_profiles` adds a calibration of another workload (or model) to an existing profile of the same machine:
`autocompress latency calibrate --update PROFILE.yaml`.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.evaluators.latency._base import Workload
from autocompress.evaluators.latency.call_overhead import measure_call_overheads
from autocompress.evaluators.latency.gemm_table import Progress, kernel_entries, table_jobs, time_table
from autocompress.evaluators.latency.kernels import build_real_model, dense_dtype
from autocompress.evaluators.latency.machine import (is_cuda, cache_mb, machine_name, measure_bandwidth,
                                                     measure_overhead)
from autocompress.evaluators.latency.measured import measure_model
from autocompress.evaluators.latency.roofline import op_time
from autocompress.hardware.profile import Calibration, DeviceProfile, Kernel, TableEntry, WorkloadCalibration
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan


REST_SCALE_RANGE = (0.05, 1000.0)  # tiny models are all Python overhead: large, but finite
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compute_type(fmt: str, dtype: str, kernels: dict[str, Kernel] | None = None) -> str:
    """The math a format's kernel runs in: its kernel entry's `compute`, else the dense dtype."""
    kernel = (kernels or {}).get(fmt)
    return (kernel.compute if kernel is not None else None) or ("int8" if fmt == "w8a8" else dtype)


def calibrate(base_model: nn.Module, info: ModelInfo, device: str = "cpu", workload: Workload = Workload(),
              model_name: str = "", progress: Progress | None = None, *, name: str | None = None,
              repeats: int = 20, min_total_s: float = 0.2, passes: int = 3,
              bandwidth_mb: int = 256, in_model: bool = True) -> DeviceProfile:
    """Measure a `DeviceProfile` of this machine for `base_model` (inventory `info`) at `workload` (prefill or
    decode; decode needs a causal LM).

    `progress(advance, total, description)` is called as each measurement finishes. Every table GEMM is
    timed in `passes` interleaved sweeps (the fastest median wins: another process taking the cores only ever
    slows a sweep down), each with `time_ms(repeats=repeats, min_total_s=min_total_s)`; a GEMM slower than a
    larger one of its format is then timed again. Last, with `in_model`, each kernel format's per-call cost
    inside the whole model beyond its table price (`call_overhead.measure_call_overheads`). Raises `UserError` for a device that is not here, or decode
    of an encoder."""
    from autocompress.evaluators.latency.measured import _is_causal
    from autocompress.evaluators.latency.table import TableLatency

    device = str(device)
    if is_cuda(device) and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                        "calibrate on the GPU machine, or use --device cpu")
    if not (is_cuda(device) or device == "cpu"):
        raise UserError(f"device {device!r} is not supported; use cpu or cuda")
    if workload.mode == "decode" and not _is_causal(base_model):
        raise UserError(f"mode decode needs a causal language model; {model_name or info.model_type} is an encoder "
                        "(use --mode prefill)")
    dtype = _DTYPE_NAMES[dense_dtype(device)]
    jobs = table_jobs(info, workload, device)
    passes = max(1, passes)
    total = passes * len(jobs) + 3
    report = progress or (lambda advance, total, description: None)
    start = time.perf_counter()

    times = time_table(jobs, device, repeats, min_total_s, passes, report, total)
    table = [TableEntry(format=f, group=g, m=m, k=k, n=n, ms=float(f"{ms:.6g}"))
             for (f, g, m, k, n), ms in times.items()]
    kernels = kernel_entries(device)
    peaks: dict[str, float] = {}
    for e in table:
        rate = 2.0 * e.m * e.k * e.n / (e.ms * 1e-3) / 1e12
        ct = compute_type(e.format, dtype, kernels)
        peaks[ct] = max(peaks.get(ct, 0.0), rate)
    peaks = {k: float(f"{v:.4g}") for k, v in peaks.items()}

    report(0, total, "memory bandwidth")
    bandwidth = float(f"{statistics.median(measure_bandwidth(device, bandwidth_mb) for _ in range(passes)):.4g}")
    report(1, total, "memory bandwidth")
    report(0, total, "launch overhead")
    overhead = float(f"{measure_overhead(device):.4g}")
    report(1, total, "launch overhead")

    machine = machine_name()
    threads = torch.get_num_threads()
    today = datetime.date.today().isoformat()
    this = WorkloadCalibration(model=model_name or info.model_type, batch=workload.batch, seq_len=workload.seq_len,
                               date=today)
    calib = Calibration(machine=machine, date=today, torch=torch.__version__,
                        threads=threads, workloads={workload.mode: this})
    profile = DeviceProfile(
        name=name or ("gpu-local" if is_cuda(device) else "cpu-local"),
        kind="gpu" if is_cuda(device) else "cpu",
        description=_description(machine, calib),
        sources=[f"measured by autocompress latency calibrate on {machine}"],
        dtype=dtype, peak_tflops=peaks, bandwidth_gbs=bandwidth, cache_mb=0.0 if is_cuda(device) else cache_mb(),
        overhead_us=overhead,
        kernels={f: k.model_copy(update={"compute": compute_type(f, dtype, kernels)}) for f, k in kernels.items()},
        calibration=calib, table=table)

    report(0, total, f"whole model ({this.model}, {workload.mode})")
    model = build_real_model(base_model, CompressionPlan({}), device)
    try:
        measured = min(measure_model(model, workload, device) for _ in range(passes))
    finally:
        del model
    predicted = TableLatency(profile).predict(CompressionPlan({}), info, workload)
    gemm_ms = sum(o.ms for o in predicted.ops if o.op.kind in ("gemm", "kv_cache"))  # kv_cache: bytes, unscaled
    rest_ms = sum(op_time(o.op, profile, workload.mode)[0] for o in predicted.ops
                  if o.op.kind not in ("gemm", "kv_cache"))
    lo, hi = REST_SCALE_RANGE
    rest_scale = min(max((measured - gemm_ms) / rest_ms, lo), hi) if rest_ms > 0 else 1.0
    this = this.model_copy(update={"rest_scale": float(f"{rest_scale:.4g}")})
    profile = profile.model_copy(update={"calibration": calib.model_copy(update={"workloads": {workload.mode: this}})})
    if in_model:
        overheads = measure_call_overheads(base_model, info, device, workload, profile, kernels,
                                           report=lambda what: report(0, total, what))
        this = this.model_copy(update={"call_overhead_ms": overheads})
        profile = profile.model_copy(
            update={"calibration": calib.model_copy(update={"workloads": {workload.mode: this}})})
    report(1, total, f"done in {time.perf_counter() - start:.0f} s")
    return profile


def _description(machine: str, calib: Calibration) -> str:
    runs = "; ".join(f"{w.model} at batch {w.batch} seq_len {w.seq_len} ({mode}, {w.date or calib.date})"
                     for mode, w in calib.workloads.items())
    return (f"{machine}, measured by `autocompress latency calibrate` on {calib.date} with torch {calib.torch}, "
            f"{calib.threads} threads, {runs}")


def merge_profiles(old: DeviceProfile, new: DeviceProfile) -> DeviceProfile:
    """`old` with the calibration `new` adds (another workload mode, or the same mode again): the table's
    entries `new` measured replace old ones of the same (format, group, m, k, n), the others stay; `new`'s
    workloads replace old ones of the same mode (an old workload without a date of its own keeps the old
    calibration's); peaks are the best of both; bandwidth, overhead, cache, kernels and the
    machine/date/torch/threads record are `new`'s. Raises `UserError` when `old` is not a calibrated
    profile of the same kind of device."""
    if old.calibration is None or old.kind != new.kind or old.dtype != new.dtype:
        raise UserError(f"profile {old.name!r} is not a calibrated {new.kind} profile in {new.dtype}; calibrate into "
                        "a new file instead (--out without --update)")
    fresh = {(e.format, e.group, e.m, e.k, e.n) for e in new.table}
    table = [e for e in old.table if (e.format, e.group, e.m, e.k, e.n) not in fresh] + list(new.table)
    peaks = {k: max(old.peak_tflops.get(k, 0.0), new.peak_tflops.get(k, 0.0))
             for k in {**old.peak_tflops, **new.peak_tflops}}
    kept = {mode: w if w.date else w.model_copy(update={"date": old.calibration.date})
            for mode, w in old.calibration.workloads.items()}
    calib = new.calibration.model_copy(update={"workloads": {**kept, **new.calibration.workloads}})
    return new.model_copy(update={"name": old.name, "peak_tflops": peaks, "table": table, "calibration": calib,
                                  "description": _description(calib.machine, calib)})


def save_profile(profile: DeviceProfile, path: str | os.PathLike) -> Path:
    """Write `profile` as YAML (a header comment says how it was made); returns the path."""
    import yaml

    path = Path(path)
    c = profile.calibration
    header = ["# Device profile measured by `autocompress latency calibrate`: do not edit the numbers by hand,",
              "# re-run the calibration to refresh them."]
    if c is not None:
        header += [f"# machine: {c.machine}; {c.date}; torch {c.torch}, {c.threads} threads"]
        header += [f"# {mode}: {w.model} at batch {w.batch}, seq_len {w.seq_len}, measured {w.date or c.date}"
                   for mode, w in c.workloads.items()]
    header += ["# peak_tflops are the best rates the table's GEMMs achieved (efficiency 1.0); bandwidth from a",
               "# large tensor copy; overhead_us from a tiny add; table: median ms per GEMM [m, k] x [k, n] (group:",
               "# inputs per scale of a grouped weight format); calibration.workloads.<mode>.rest_scale: the measured",
               "# non-GEMM time of that workload over its roofline estimate."]
    body = yaml.safe_dump(profile.model_dump(mode="json", exclude_none=True), sort_keys=False,
                          default_flow_style=None, width=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
    return path
