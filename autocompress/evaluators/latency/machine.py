"""What the machine at hand is and does, for `autocompress latency calibrate`: its name, its last-level
cache, its memory bandwidth and the fixed cost of one tiny operator."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from autocompress.evaluators.latency._base import time_ms


def is_cuda(device: str) -> bool:
    """Whether `device` names a CUDA device."""
    return str(device).startswith("cuda")


def sync(device: str) -> None:
    """Wait for the GPU's queued work on a CUDA `device` (nothing on the CPU)."""
    if is_cuda(device):
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


def measure_bandwidth(device: str, mb: int = 256) -> float:
    """GB/s of a copy of an `mb`-MB tensor into another, preallocated one (bytes read + written over the median
    time). Preallocated: a fresh `clone` would time the kernel's page faults on new memory, not bandwidth."""
    x = torch.ones(mb * 2**20 // 4, dtype=torch.float32, device=device)
    y = torch.zeros_like(x)

    def fn() -> None:
        y.copy_(x)
        sync(device)

    ms = time_ms(fn, warmup=2, repeats=10, min_total_s=0.0)
    return 2.0 * mb * 2**20 / (ms * 1e-3) / 1e9


def measure_overhead(device: str) -> float:
    """Microseconds of a tiny operator: an add of two 8-element tensors."""
    a = torch.ones(8, device=device)
    b = torch.ones(8, device=device)

    def fn() -> None:
        a + b
        sync(device)

    return time_ms(fn, warmup=20, repeats=200, min_total_s=0.1) * 1e3
