"""The GEMM table of a calibration: which GEMMs to time, in which weight layouts, and how.

`gemm_shapes` lists every distinct (m, k, n) of the model's dense plan at the workload and the shapes a search
makes of them (low-rank factors, structured shrink, the decode step of a prefill workload); `layouts` the weight
layouts with a real kernel on the device; `time_table` times each (shape, layout) job as `real_linear` of an
`nn.Linear(k, n)` cycling through enough weight copies to exceed the last-level cache twice, in interleaved
sweeps keeping the fastest median, then times again the GEMMs that look like noise (`_suspects`).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from autocompress.evaluators.latency._base import Workload, plan_ops, time_ms
from autocompress.evaluators.latency.kernels import available_formats, dense_dtype, real_linear
from autocompress.evaluators.latency.machine import cache_mb, is_cuda, sync
from autocompress.hardware.profile import Kernel, group_key
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan

Progress = Callable[[int, int, str], None]  # (advance, total, description)

LOWRANK_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)
SHRINK_FACTORS = (0.5, 0.75)
OUTLIER_FACTOR = 1.5  # a GEMM this much slower than a larger one of the same format and m is re-timed
RETIME_ROUNDS = 2
MAX_COPIES = 64  # weight copies a GEMM cycles through at most (see `_copies`)
CUDA_KERNELS = {"2:4": Kernel(fast=True, note="torch semi-structured sparse Linear, measured in the table")}


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


def table_jobs(info: ModelInfo, workload: Workload, device: str) -> dict[Key, int | None]:
    """Every GEMM to time: table key -> the group size to build it with, for each shape of `gemm_shapes` in each
    layout of `layouts` whose kernel takes it (a group as long as the row is the per-channel layout: once)."""
    kernels = kernel_entries(device)
    jobs: dict[Key, int | None] = {}
    for fmt, g in layouts(device):
        for m, k, n in gemm_shapes(info, workload):
            if fmt == "dense" or kernels[fmt].takes(g, k, n):
                jobs.setdefault((fmt, group_key(g, k), m, k, n), g)
    return jobs


def time_table(jobs: dict[Key, int | None], device: str, repeats: int, min_total_s: float, passes: int,
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
