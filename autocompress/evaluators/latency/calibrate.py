"""Calibrate a device profile on the machine at hand (`autocompress latency calibrate`).

Micro-benchmarks, all timed with `time_ms` (warm-up, then the median of repeats):
  table      every distinct GEMM (m, k, n) of the model's dense plan at the workload, plus the shapes a search
             produces from them: low-rank factors (rank 1/8, 1/4, 1/2 of min(k, n): (m, k, r) and (m, r, n)),
             structured shrink (n, or k, scaled by 0.5 and 0.75), and, for a prefill workload, the base shapes at
             m = batch (the decode step) - each in every format with a real kernel here (`available_formats`),
             as `real_linear` of an `nn.Linear(k, n)` on an input [m, k], cycling through enough weight copies
             to exceed the last-level cache twice (weights come from memory, as in the model; timing one
             hot copy under-priced fp32 layers by up to 20% against whole-model timing). Timed in interleaved sweeps, keeping
             the fastest median (another process taking the cores only slows a sweep down); a GEMM slower than a
             larger one of its format and m is timed again;
  peaks      the best FLOP rate the table achieved, per compute type (dense -> the dense dtype, w8a8 -> int8):
             the peaks ARE achieved rates, so the profile's efficiency is 1.0;
  bandwidth  a copy of a large tensor (256 MB by default) into a preallocated one: bytes read + written / time;
  overhead   a tiny operator (an add of two 8-element tensors);
  rest_scale the whole dense model timed with `measure_model`, minus the table's GEMMs, over the roofline's
             estimate of the non-GEMM operators: what the element-wise work really costs here.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.evaluators.latency._base import Workload, plan_ops, time_ms
from autocompress.evaluators.latency.kernels import available_formats, build_real_model, dense_dtype, real_linear
from autocompress.evaluators.latency.measured import measure_model
from autocompress.evaluators.latency.roofline import op_time
from autocompress.hardware.profile import Calibration, DeviceProfile, Kernel, TableEntry
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan

Progress = Callable[[int, int, str], None]  # (advance, total, description)

LOWRANK_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)
SHRINK_FACTORS = (0.5, 0.75)
OUTLIER_FACTOR = 1.5  # a GEMM this much slower than a larger one of the same format and m is re-timed
RETIME_ROUNDS = 2
REST_SCALE_RANGE = (0.05, 1000.0)  # tiny models are all Python overhead: large, but finite
KERNEL_NOTES = {"w8a8": "torch.ao dynamic int8 Linear, measured in the table",
                "2:4": "torch semi-structured sparse Linear, measured in the table"}
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def _sync(device: str) -> None:
    if _is_cuda(device):
        torch.cuda.synchronize()


def machine_name() -> str:
    """The CPU model (or GPU name) and core count, e.g. `AMD EPYC (2 cores)`; no host names."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = f"{cpu} ({os.cpu_count()} cores)"
    if torch.cuda.is_available():
        name = f"{torch.cuda.get_device_name()}, host {name}"
    return name


def cache_mb() -> float:
    """The last-level CPU cache in MB, from /sys (else lscpu; else 0)."""
    best = (0, 0.0)
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in base.glob("index*"):
            level = int((index / "level").read_text().strip())
            size = (index / "size").read_text().strip().upper()
            mult = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(size[-1], 1 / (1024 * 1024))
            value = float(size.rstrip("KMGB")) * mult
            best = max(best, (level, value))
    except (OSError, ValueError):
        best = (0, 0.0)
    if best[1] > 0:
        return best[1]
    try:
        import subprocess

        out = subprocess.run(["lscpu", "-B"], check=False, capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("L3 cache:"):
                return float(line.split(":", 1)[1].split()[0]) / (1024 * 1024)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    return 0.0


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


def compute_type(fmt: str, dtype: str) -> str:
    """The math a format's kernel runs in: int8 for w8a8, the dense dtype for everything else."""
    return "int8" if fmt == "w8a8" else dtype


def _copies(k: int, n: int, fmt: str, device: str) -> int:
    """How many distinct weight copies a GEMM cycles through so that each call reads its weights from memory,
    as it does inside a model whose weights exceed the cache: twice the last-level cache, at most 64 copies
    and 512 MB."""
    llc = (cache_mb() if not _is_cuda(device) else 0.0) or 32.0
    weight = k * n * (1 if fmt == "w8a8" else dense_dtype(device).itemsize)
    return max(1, min(64, math.ceil(2 * llc * 2**20 / weight), (512 * 2**20) // max(weight, 1)))


def _time_gemm(m: int, k: int, n: int, fmt: str, device: str, repeats: int, min_total_s: float) -> float:
    dtype = dense_dtype(device)
    torch.manual_seed(0)
    modules = [real_linear(nn.Linear(k, n), fmt, device) for _ in range(_copies(k, n, fmt, device))]
    x = torch.randn(m, k, dtype=dtype, device=device) if fmt != "w8a8" else torch.randn(m, k)
    state = {"i": 0}

    def fn() -> None:
        state["i"] = (state["i"] + 1) % len(modules)
        modules[state["i"]](x)
        if _is_cuda(device):
            _sync(device)

    return time_ms(fn, warmup=2 + len(modules), repeats=repeats, min_total_s=min_total_s)


def _suspects(times: dict[tuple[str, int, int, int], float]) -> list[tuple[str, int, int, int]]:
    """GEMMs that look like timing noise (another process took the cores) rather than the kernel, to be timed
    again: slower than OUTLIER_FACTOR x a GEMM of the same format and m with at least as many FLOPs, or
    running at under 1 / OUTLIER_FACTOR of the FLOP rate of a smaller one (larger GEMMs run at least as
    efficiently as smaller ones)."""
    out = []
    for key, ms in times.items():
        fmt, m, k, n = key
        peers = [(k2 * n2, t) for (f2, m2, k2, n2), t in times.items()
                 if f2 == fmt and m2 == m and (k2, n2) != (k, n)]
        slower_than_bigger = any(w >= k * n and ms > OUTLIER_FACTOR * t for w, t in peers)
        slower_rate = any(w <= k * n and ms > OUTLIER_FACTOR * t * (k * n) / w for w, t in peers)
        if slower_than_bigger or slower_rate:
            out.append(key)
    return out


def measure_bandwidth(device: str, mb: int = 256) -> float:
    """GB/s of a copy of an `mb`-MB tensor into another, preallocated one (bytes read + written over the median
    time). Preallocated: a fresh `clone` would time the kernel's page faults on new memory, not bandwidth."""
    x = torch.ones(mb * 2**20 // 4, dtype=torch.float32, device=device)
    y = torch.zeros_like(x)

    def fn() -> None:
        y.copy_(x)
        _sync(device)

    ms = time_ms(fn, warmup=2, repeats=10, min_total_s=0.0)
    return 2.0 * mb * 2**20 / (ms * 1e-3) / 1e9


def measure_overhead(device: str) -> float:
    """Microseconds of a tiny operator: an add of two 8-element tensors."""
    a = torch.ones(8, device=device)
    b = torch.ones(8, device=device)

    def fn() -> None:
        a + b
        _sync(device)

    return time_ms(fn, warmup=20, repeats=200, min_total_s=0.1) * 1e3


def calibrate(base_model: nn.Module, info: ModelInfo, device: str = "cpu", workload: Workload = Workload(),
              model_name: str = "", progress: Progress | None = None, *, name: str | None = None,
              repeats: int = 20, min_total_s: float = 0.2, passes: int = 3,
              bandwidth_mb: int = 256) -> DeviceProfile:
    """Measure a `DeviceProfile` of this machine for `base_model` (inventory `info`) at `workload`.

    `progress(advance, total, description)` is called as each measurement finishes. Every table GEMM is
    timed in `passes` interleaved sweeps (the fastest median wins: another process taking the cores only ever
    slows a sweep down), each with `time_ms(repeats=repeats, min_total_s=min_total_s)`; a GEMM slower than a
    larger one of its format is then timed again. Raises `UserError` for a device that is not here."""
    from autocompress.evaluators.latency.table import TableLatency

    device = str(device)
    if _is_cuda(device) and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                        "calibrate on the GPU machine, or use --device cpu")
    if not (_is_cuda(device) or device == "cpu"):
        raise UserError(f"device {device!r} is not supported; use cpu or cuda")
    dtype = _DTYPE_NAMES[dense_dtype(device)]
    formats = available_formats(device)
    shapes = gemm_shapes(info, workload)
    passes = max(1, passes)
    total = passes * len(shapes) * len(formats) + 3
    report = progress or (lambda advance, total, description: None)
    start = time.perf_counter()

    times: dict[tuple[str, int, int, int], float] = {}
    for p in range(passes):
        for fmt in formats:
            for m, k, n in shapes:
                what = f"GEMM {fmt} {m}x{k}x{n}" + (f" (pass {p + 1}/{passes})" if passes > 1 else "")
                report(0, total, what)
                ms = _time_gemm(m, k, n, fmt, device, repeats, min_total_s)
                times[(fmt, m, k, n)] = min(times.get((fmt, m, k, n), math.inf), ms)
                report(1, total, what)
    for _ in range(RETIME_ROUNDS):
        suspects = _suspects(times)
        for key in suspects:
            report(0, total, f"re-timing {key[0]} {key[1]}x{key[2]}x{key[3]}")
            times[key] = min(times[key], _time_gemm(*key[1:], key[0], device, repeats, min_total_s))
    table = [TableEntry(format=f, m=m, k=k, n=n, ms=float(f"{ms:.6g}")) for (f, m, k, n), ms in times.items()]

    peaks: dict[str, float] = {}
    for e in table:
        rate = 2.0 * e.m * e.k * e.n / (e.ms * 1e-3) / 1e12
        ct = compute_type(e.format, dtype)
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
    calib = Calibration(machine=machine, date=datetime.date.today().isoformat(), torch=torch.__version__,
                        threads=threads, model=model_name or info.model_type, batch=workload.batch,
                        seq_len=workload.seq_len, rest_scale=1.0)
    profile = DeviceProfile(
        name=name or ("gpu-local" if _is_cuda(device) else "cpu-local"),
        kind="gpu" if _is_cuda(device) else "cpu",
        description=(f"{machine}, measured by `autocompress latency calibrate` on {calib.date} with torch "
                     f"{calib.torch}, {threads} threads, {calib.model} at batch {workload.batch} seq_len "
                     f"{workload.seq_len} ({workload.mode})"),
        sources=[f"measured by autocompress latency calibrate on {machine}"],
        dtype=dtype, peak_tflops=peaks, bandwidth_gbs=bandwidth, cache_mb=0.0 if _is_cuda(device) else cache_mb(),
        overhead_us=overhead,
        kernels={f: Kernel(fast=True, compute=compute_type(f, dtype), note=KERNEL_NOTES.get(f, "measured"))
                 for f in formats if f != "dense"},
        calibration=calib, table=table)

    report(0, total, f"whole model ({calib.model})")
    model = build_real_model(base_model, CompressionPlan({}), device)
    try:
        measured = min(measure_model(model, workload, device) for _ in range(passes))
    finally:
        del model
    predicted = TableLatency(profile).predict(CompressionPlan({}), info, workload)
    gemm_ms = sum(o.ms for o in predicted.ops if o.op.kind == "gemm")
    rest_ms = sum(op_time(o.op, profile)[0] for o in predicted.ops if o.op.kind != "gemm")
    lo, hi = REST_SCALE_RANGE
    rest_scale = min(max((measured - gemm_ms) / rest_ms, lo), hi) if rest_ms > 0 else 1.0
    report(1, total, f"done in {time.perf_counter() - start:.0f} s")
    return profile.model_copy(update={
        "calibration": calib.model_copy(update={"rest_scale": float(f"{rest_scale:.4g}")})})


def save_profile(profile: DeviceProfile, path: str | os.PathLike) -> Path:
    """Write `profile` as YAML (a header comment says how it was made); returns the path."""
    import yaml

    path = Path(path)
    c = profile.calibration
    header = ["# Device profile measured by `autocompress latency calibrate`: do not edit the numbers by hand,",
              "# re-run the calibration to refresh them."]
    if c is not None:
        header += [f"# machine: {c.machine}; {c.date}; torch {c.torch}, {c.threads} threads",
                   f"# model: {c.model} at batch {c.batch}, seq_len {c.seq_len}"]
    header += ["# peak_tflops are the best rates the table's GEMMs achieved (efficiency 1.0); bandwidth from a",
               "# large tensor copy; overhead_us from a tiny add; table: median ms per GEMM [m, k] x [k, n];",
               "# calibration.rest_scale: the measured non-GEMM time over its roofline estimate."]
    body = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
    return path
