"""Calibrate a device profile on the machine at hand (`autocompress latency calibrate`).

Micro-benchmarks, all timed with `time_ms` (warm-up, then the median of repeats):
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

import copy
import datetime
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.evaluators.latency._base import Workload, plan_ops, time_ms
from autocompress.evaluators.latency.call_overhead import measure_call_overheads
from autocompress.evaluators.latency.kernels import available_formats, build_real_model, dense_dtype, real_linear
from autocompress.evaluators.latency.machine import (is_cuda, sync, cache_mb, machine_name, measure_bandwidth,
                                                     measure_overhead)
from autocompress.evaluators.latency.measured import measure_model
from autocompress.evaluators.latency.roofline import op_time
from autocompress.hardware.profile import (Calibration, DeviceProfile, Kernel, TableEntry, WorkloadCalibration,
                                           group_key)
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan

Progress = Callable[[int, int, str], None]  # (advance, total, description)

LOWRANK_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)
SHRINK_FACTORS = (0.5, 0.75)
OUTLIER_FACTOR = 1.5  # a GEMM this much slower than a larger one of the same format and m is re-timed
RETIME_ROUNDS = 2
MAX_COPIES = 64  # weight copies a GEMM cycles through at most (see `_copies`)
REST_SCALE_RANGE = (0.05, 1000.0)  # tiny models are all Python overhead: large, but finite
CUDA_KERNELS = {"2:4": Kernel(fast=True, note="torch semi-structured sparse Linear, measured in the table")}
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def gemm_shapes(info: ModelInfo, workload: Workload) -> list[tuple[int, int, int]]:
    """The distinct (m, k, n) to measure: the dense plan's GEMMs and the variants a search produces."""
    base = sorted({(op.m, op.k, op.n) for op in plan_ops(CompressionPlan({}), info, workload) if op.kind == "gemm"})
    shapes = set(base)
    for m, k, n in base:
        for frac in LOWRANK_FRACTIONS:
            r = max(1, round(frac * min(k, n)))
            shapes |= {(m, k, r), (m, r, n)}
        for s in SHRINK_FACTORS:
            shapes |= {(m, k, max(1, round(n * s))), (m, max(1, round(k * s)), n)}
        if workload.mode == "prefill" and m != workload.batch:
            shapes.add((workload.batch, k, n))
    return sorted(shapes)


def kernel_entries(device: str) -> dict[str, Kernel]:
    """The profile kernel entries of the formats with a real kernel on `device` (besides dense): on the CPU the
    packed export's (`export.kernels.CPU_KERNELS`, with the weight layouts each takes)."""
    if is_cuda(device):
        table = CUDA_KERNELS
    else:
        from autocompress.export.kernels import CPU_KERNELS

        table = CPU_KERNELS
    return {f: table[f] for f in available_formats(device) if f in table}


def layouts(device: str) -> list[tuple[str, int | None]]:
    """(format, group size) of every weight layout with a real kernel on `device`: dense first, then each
    format (a per-channel kernel once with None, a grouped one once per group size it takes)."""
    out: list[tuple[str, int | None]] = [("dense", None)]
    for fmt, kernel in kernel_entries(device).items():
        out += ([(fmt, None)] if kernel.per_channel else []) + [(fmt, g) for g in kernel.groups]
    return out


def compute_type(fmt: str, dtype: str, kernels: dict[str, Kernel] | None = None) -> str:
    """The math a format's kernel runs in: its kernel entry's `compute`, else the dense dtype."""
    kernel = (kernels or {}).get(fmt)
    return (kernel.compute if kernel is not None else None) or ("int8" if fmt == "w8a8" else dtype)


def _weight_bytes(k: int, n: int, fmt: str, device: str) -> float:
    if fmt.startswith("w"):
        return k * n * (1.0 if fmt in ("w8a8", "w8") else int(fmt[1:]) / 8)
    return float(k * n * dense_dtype(device).itemsize)


def _copies(k: int, n: int, fmt: str, device: str) -> int:
    """How many distinct weight copies a GEMM cycles through so that each call reads its weights from memory,
    as it does inside a model whose weights exceed the cache: twice the last-level cache, at most MAX_COPIES
    copies and 512 MB."""
    llc = (cache_mb() if not is_cuda(device) else 0.0) or 32.0
    weight = max(_weight_bytes(k, n, fmt, device), 1.0)
    return max(1, min(MAX_COPIES, math.ceil(2 * llc * 2**20 / weight), int(512 * 2**20 // weight)))


def _time_gemm(m: int, k: int, n: int, fmt: str, group: int | None, device: str, repeats: int,
               min_total_s: float) -> float:
    dtype = dense_dtype(device)
    torch.manual_seed(0)
    first = real_linear(nn.Linear(k, n), fmt, device, group)
    # copies of the first module (distinct memory, same kernel): building each anew repeats the quantization and
    # the packing (0.1-0.4 s for a w8a8 LM head); on a GPU, sparse weights are built anew
    make = (lambda: real_linear(nn.Linear(k, n), fmt, device, group)) if is_cuda(device) else \
        (lambda: copy.deepcopy(first))
    modules = [first] + [make() for _ in range(_copies(k, n, fmt, device) - 1)]
    x = torch.randn(m, k, dtype=dtype, device=device)
    state = {"i": 0}

    def fn() -> None:
        state["i"] = (state["i"] + 1) % len(modules)
        modules[state["i"]](x)
        if is_cuda(device):
            sync(device)

    return time_ms(fn, warmup=2 + len(modules), repeats=repeats, min_total_s=min_total_s)


Key = tuple[str, int | None, int, int, int]  # (format, group as `group_key` gives it, m, k, n)


def _suspects(times: dict[Key, float]) -> list[Key]:
    """GEMMs that look like timing noise (another process took the cores) rather than the kernel, to be timed
    again: slower than OUTLIER_FACTOR x a GEMM of the same format, group and m with at least as many FLOPs, or
    running at under 1 / OUTLIER_FACTOR of the FLOP rate of a smaller one (larger GEMMs run at least as
    efficiently as smaller ones)."""
    out = []
    for key, ms in times.items():
        fmt, group, m, k, n = key
        peers = [(k2 * n2, t) for (f2, g2, m2, k2, n2), t in times.items()
                 if f2 == fmt and g2 == group and m2 == m and (k2, n2) != (k, n)]
        slower_than_bigger = any(w >= k * n and ms > OUTLIER_FACTOR * t for w, t in peers)
        slower_rate = any(w <= k * n and ms > OUTLIER_FACTOR * t * (k * n) / w for w, t in peers)
        if slower_than_bigger or slower_rate:
            out.append(key)
    return out


def _jobs(info: ModelInfo, workload: Workload, device: str) -> dict[Key, int | None]:
    """Every GEMM to time: table key -> the group size to build it with, for each shape of `gemm_shapes` in each
    layout of `layouts` whose kernel takes it (a group as long as the row is the per-channel layout: once)."""
    kernels = kernel_entries(device)
    jobs: dict[Key, int | None] = {}
    for fmt, g in layouts(device):
        for m, k, n in gemm_shapes(info, workload):
            if fmt == "dense" or kernels[fmt].takes(g, k, n):
                jobs.setdefault((fmt, group_key(g, k), m, k, n), g)
    return jobs


def _time_table(jobs: dict[Key, int | None], device: str, repeats: int, min_total_s: float, passes: int,
                report: Progress, total: int) -> dict[Key, float]:
    """Median ms of every job, the fastest of `passes` interleaved sweeps; then `_suspects` timed again."""
    times: dict[Key, float] = {}

    def run(key: Key) -> float:
        fmt, _, m, k, n = key
        return _time_gemm(m, k, n, fmt, jobs[key], device, repeats, min_total_s)

    for p in range(passes):
        for key in jobs:
            fmt, group, m, k, n = key
            what = (f"GEMM {fmt}{'' if group is None else f' g{group}'} {m}x{k}x{n}"
                    + (f" (pass {p + 1}/{passes})" if passes > 1 else ""))
            report(0, total, what)
            times[key] = min(times.get(key, math.inf), run(key))
            report(1, total, what)
    for _ in range(RETIME_ROUNDS):
        for key in _suspects(times):
            report(0, total, f"re-timing {key[0]} {key[2]}x{key[3]}x{key[4]}")
            times[key] = min(times[key], run(key))
    return times


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
    jobs = _jobs(info, workload, device)
    passes = max(1, passes)
    total = passes * len(jobs) + 3
    report = progress or (lambda advance, total, description: None)
    start = time.perf_counter()

    times = _time_table(jobs, device, repeats, min_total_s, passes, report, total)
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
