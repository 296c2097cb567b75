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

A weight format's kernel takes only some weight layouts (`Kernel.takes`): one scale per output channel
(`per_channel`), and/or groups of the sizes in `groups` (each dividing the layer's in_features), with
out_features a multiple of `out_multiple` and in_features a multiple of `in_multiple`. A layer whose layout
the kernel does not take runs as its fallback (`DeviceProfile.kernel_for`): e.g. a 4-bit layer with one
scale per output channel on a kernel that takes groups 32..256 only runs dense. The same rule picks the real
CPU kernels of the packed export (`autocompress.export.kernels.kernel_kind`), so a profile measured here
prices what the export runs.

A calibrated profile records, per workload it was calibrated for (`prefill`, `decode`), the model, batch,
sequence length and the non-GEMM `rest_scale` measured there (`Calibration.workloads`); its `table` holds both
workloads' GEMMs (told apart by their token count m). The older one-workload form (`model`, `batch`, `seq_len`,
`rest_scale` directly under `calibration`) still loads, as a prefill calibration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autocompress.errors import UserError

PROFILE_DIR = Path(__file__).parent
FORMATS = ("dense", "w8a8", "w8", "w7", "w6", "w5", "w4", "w3", "w2", "2:4")
WEIGHT_FORMATS = frozenset(f for f in FORMATS if f.startswith("w"))  # the formats with integer weights
ComputeType = Literal["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]
Mode = Literal["prefill", "decode"]
DTYPE_BYTES = {"fp32": 4.0, "tf32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "fp8": 1.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def group_key(group_size: int | None, in_features: int) -> int | None:
    """The group size of a layer's integer weights as a layout: None for one scale per output channel
    (group_size None, or a group at least as long as the row of `in_features`), else `group_size`."""
    return None if group_size is None or group_size >= in_features else group_size


class Kernel(_Strict):
    """How one weight format runs on the device."""

    fast: bool
    compute: ComputeType | None = None  # the math it runs in (default: the profile's dtype)
    compute_speedup: float = Field(1.0, gt=0)  # e.g. 2.0 for 2:4 sparse tensor cores at the compute limit
    fallback: Literal["dense", "dequant"] = "dense"
    # weight formats only: the layouts the kernel takes (see the module docstring)
    per_channel: bool = True  # one scale per output channel (group_size None, or a group spanning the row)
    groups: tuple[int, ...] = ()  # group sizes (input channels per scale) it takes, each dividing in_features
    out_multiple: int = Field(1, ge=1)  # out_features must be a multiple of this
    in_multiple: int = Field(1, ge=1)  # in_features must be a multiple of this
    note: str = ""

    @field_validator("groups")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(g < 1 for g in v):
            raise ValueError("each group size must be a positive integer")
        return v

    def takes(self, group_size: int | None, in_features: int, out_features: int) -> bool:
        """Whether this kernel runs a weight [out_features, in_features] quantized with `group_size` input
        channels per scale (None: one scale per output channel; a group at least as long as the row is one
        scale per output channel too)."""
        if out_features % self.out_multiple or in_features % self.in_multiple:
            return False
        group = group_key(group_size, in_features)
        if group is None:
            return self.per_channel or (group_size in self.groups and in_features % group_size == 0)
        return group in self.groups and in_features % group == 0


class Efficiency(_Strict):
    """Achievable share of the peaks (1.0 = the spec sheet). Calibration measures them."""

    compute: float = Field(1.0, gt=0, le=1.0)
    memory: float = Field(1.0, gt=0, le=1.0)


class TableEntry(_Strict):
    """One measured operator: a GEMM of [m, k] x [k, n] in `format` (for a grouped weight format, with `group`
    input channels per scale; None: per output channel or no weight quantization), its median time."""

    format: str
    group: int | None = None
    m: int
    k: int
    n: int
    ms: float


class WorkloadCalibration(_Strict):
    """One calibrated workload: the model timed, its batch and sequence length, and `rest_scale`, the measured
    non-GEMM time of one call (attention, element-wise work, dispatch) over the roofline's estimate of it, and
    `call_overhead_ms`, per kernel format (and "act_quant"), what one call costs inside the whole model beyond
    its table price (`evaluators.latency.call_overhead`; absent: nothing added)."""

    model: str
    batch: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    rest_scale: float = Field(1.0, gt=0)
    call_overhead_ms: dict[str, float] = Field(default_factory=dict)
    date: str | None = None  # when this workload was measured (`Calibration.date` when absent)


class Calibration(_Strict):
    """Where and how a profile was measured: the machine, and each workload calibrated (prefill, decode).
    `date` is the latest calibration's; each workload keeps its own (`--update` adds a workload without
    re-dating the others)."""

    machine: str
    date: str
    torch: str
    threads: int
    workloads: dict[Mode, WorkloadCalibration] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_workload_form(cls, data: Any) -> Any:
        """The older form, model/batch/seq_len/rest_scale directly here, is a prefill calibration."""
        if isinstance(data, dict) and "workloads" not in data and "model" in data:
            data = dict(data)
            flat = {k: data.pop(k) for k in ("model", "batch", "seq_len", "rest_scale") if k in data}
            data["workloads"] = {"prefill": flat}
        return data

    def rest_scale(self, mode: str) -> float:
        """The non-GEMM scale of `mode`; a profile calibrated for the other workload only uses that one's."""
        w = self.workloads.get(mode) or next(iter(self.workloads.values()))
        return w.rest_scale

    def call_overheads(self, mode: str) -> dict[str, float]:
        """Per-call in-model costs of `mode` (format -> ms); empty when that mode was not calibrated with them
        (another mode's are not used: they depend on the workload's token count)."""
        w = self.workloads.get(mode)
        return dict(w.call_overhead_ms) if w is not None else {}


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

    @field_validator("kernels")
    @classmethod
    def _layouts_fit_formats(cls, v: dict[str, Kernel]) -> dict[str, Kernel]:
        for fmt, k in v.items():
            if fmt not in WEIGHT_FORMATS and (k.groups or not k.per_channel or k.out_multiple != 1
                                              or k.in_multiple != 1):
                raise ValueError(f"{fmt}: per_channel, groups, out_multiple and in_multiple describe integer weight "
                                 f"layouts; format {fmt!r} has none (remove them)")
            if fmt in WEIGHT_FORMATS and k.fast and not k.per_channel and not k.groups:
                raise ValueError(f"{fmt}: a fast kernel that takes no weight layout; set per_channel: true "
                                 "or list the group sizes it takes (groups: [32, 64, 128, 256])")
        return v

    def kernel(self, fmt: str) -> Kernel:
        """The kernel entry for `fmt`; a format the table does not name has no fast kernel."""
        return self.kernels.get(fmt, Kernel(fast=fmt == "dense", fallback="dense"))

    def kernel_for(self, fmt: str, group_size: int | None, in_features: int, out_features: int) -> Kernel:
        """The kernel that runs one weight [out_features, in_features] of `fmt` quantized with `group_size`:
        the format's entry, except that a fast kernel which does not take that layout (`Kernel.takes`) is
        replaced by a slow one with the entry's fallback (what runs instead)."""
        kernel = self.kernel(fmt)
        if kernel.fast and fmt in WEIGHT_FORMATS and not kernel.takes(group_size, in_features, out_features):
            return Kernel(fast=False, fallback=kernel.fallback,
                          note=f"the {fmt} kernel does not take group_size {group_size} on [{out_features}, "
                               f"{in_features}]")
        return kernel

    def peak(self, compute: str) -> float:
        """Peak TFLOP/s (or TOP/s) for a compute type; falls back to the profile's dtype."""
        return self.peak_tflops.get(compute) or self.peak_tflops[self.dtype]


def format_of(bits: int | None, act_bits: int | None, pattern: str | None, symmetric: bool = True) -> str:
    """The kernel format a Linear's plan produces (weights win over sparsity: no shipped device has
    a combined kernel). Unstructured sparsity has no kernel on any shipped device: it runs dense. W8A8 is
    symmetric int8 weights with int8 activations; asymmetric 8-bit weights run weight-only (`w8`), their
    activations quantized in front of the kernel."""
    if bits == 8 and act_bits == 8 and symmetric:
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

    from autocompress.yaml_io import safe_load

    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"device profile {str(name_or_path)!r} does not exist; shipped profiles: "
                        f"{', '.join(list_profiles())}, or give a profile .yaml path "
                        "(make one with `autocompress latency calibrate`)")
    try:
        data = safe_load(path.read_text(encoding="utf-8"))  # a repeated key refused (yaml_io.py)
        return DeviceProfile.model_validate(data)
    except yaml.YAMLError as exc:
        raise UserError(f"device profile {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UserError(f"device profile {str(path)!r}: {loc}: {err['msg']}") from None
