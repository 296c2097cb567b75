"""Device profiles: what a target device can do, as data (one YAML file per device, sources cited in it).

A profile states peak compute per number format, memory bandwidth, cache, the fixed cost of launching one
operator, the achievable share of peak (1.0 until calibrated), and a kernel table: for each weight format a
plan can produce, whether the device has a fast kernel for it and what the format costs without one.

Formats (`format_of` maps a layer's plan onto them):
  dense   the deployment dtype (`dtype`: fp32 on CPUs, fp16/bf16 on GPUs)
  w8a8    int8 weights and dynamic int8 activations (int8 GEMM)
  w2..w8  weight-only integers (activations stay in `dtype`)
  2:4     semi-structured sparsity (no bits)
Without a kernel (`fast: false`), `fallback` says what runs instead: `dense` (dequantized once at load: the
dense cost) or `dequant` (dequantized on every call: the dense cost plus reading the packed weights).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autocompress.errors import UserError

PROFILE_DIR = Path(__file__).parent
FORMATS = ("dense", "w8a8", "w8", "w7", "w6", "w5", "w4", "w3", "w2", "2:4")
ComputeType = Literal["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Kernel(_Strict):
    """How one weight format runs on the device."""

    fast: bool
    compute: ComputeType | None = None  # the math it runs in (default: the profile's dtype)
    compute_speedup: float = Field(1.0, gt=0)  # e.g. 2.0 for 2:4 sparse tensor cores at the compute limit
    fallback: Literal["dense", "dequant"] = "dense"
    note: str = ""


class Efficiency(_Strict):
    """Achievable share of the peaks (1.0 = the spec sheet). Calibration measures them."""

    compute: float = Field(1.0, gt=0, le=1.0)
    memory: float = Field(1.0, gt=0, le=1.0)


class TableEntry(_Strict):
    """One measured operator: a GEMM of [m, k] x [k, n] in `format`, its median time."""

    format: str
    m: int
    k: int
    n: int
    ms: float


class Calibration(_Strict):
    """Where and how a profile was measured."""

    machine: str
    date: str
    torch: str
    threads: int
    model: str
    batch: int
    seq_len: int
    rest_scale: float = 1.0  # measured non-GEMM time / the roofline estimate of it


class DeviceProfile(_Strict):
    name: str
    kind: Literal["gpu", "cpu"]
    description: str
    sources: list[str] = Field(min_length=1)
    dtype: Literal["fp32", "fp16", "bf16"]
    peak_tflops: dict[ComputeType, float]
    bandwidth_gbs: float = Field(gt=0)
    cache_mb: float = Field(ge=0)
    overhead_us: float = Field(ge=0)
    efficiency: Efficiency = Efficiency()
    kernels: dict[str, Kernel] = {}
    calibration: Calibration | None = None
    table: list[TableEntry] = []

    def kernel(self, fmt: str) -> Kernel:
        """The kernel entry for `fmt`; a format the table does not name has no fast kernel."""
        return self.kernels.get(fmt, Kernel(fast=fmt == "dense", fallback="dense"))

    def peak(self, compute: str) -> float:
        """Peak TFLOP/s (or TOP/s) for a compute type; falls back to the profile's dtype."""
        return self.peak_tflops.get(compute) or self.peak_tflops[self.dtype]


def format_of(bits: int | None, act_bits: int | None, pattern: str | None) -> str:
    """The kernel format a Linear's plan produces (weights win over sparsity: no shipped device has
    a combined kernel). Unstructured sparsity has no kernel on any shipped device: it runs dense."""
    if bits == 8 and act_bits == 8:
        return "w8a8"
    if bits is not None:
        return f"w{bits}"
    if pattern == "2:4":
        return "2:4"
    return "dense"


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """A shipped profile by name (`h100-sxm`) or a profile YAML file by path. `UserError` if neither."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"device profile {str(name_or_path)!r} does not exist; shipped profiles: "
                        f"{', '.join(list_profiles())}, or give a profile .yaml path "
                        "(make one with `autocompress latency calibrate`)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return DeviceProfile.model_validate(data)
    except yaml.YAMLError as exc:
        raise UserError(f"device profile {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UserError(f"device profile {str(path)!r}: {loc}: {err['msg']}") from None
