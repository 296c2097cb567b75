"""Per-call in-model costs: measured by calibration (call_overhead.py), added by the table model per call."""

from __future__ import annotations

import math

import pytest
import torch

from autocompress.evaluators.latency import call_overhead
from autocompress.evaluators.latency._base import Workload, plan_ops
from autocompress.evaluators.latency.calibrate import calibrate, save_profile
from autocompress.evaluators.latency.gemm_table import kernel_entries
from autocompress.evaluators.latency.call_overhead import ACT_QUANT, kernel_calls, uniform_plan
from autocompress.evaluators.latency.kernels import available_formats
from autocompress.evaluators.latency.table import MIN_SHARE, TableLatency
from autocompress.hardware.profile import (Calibration, DeviceProfile, Kernel, TableEntry, WorkloadCalibration,
                                           load_profile)
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan

DECODE = Workload(batch=1, seq_len=16, mode="decode")
W8 = Kernel(fast=True, compute="bf16", per_channel=True)
W4 = Kernel(fast=True, compute="bf16", per_channel=False, groups=(32,))


def _profile(overheads: dict[str, float], mode: str = "decode") -> DeviceProfile:
    """A table with one dense and one w8 entry per shape of a tiny model's GEMMs."""
    calib = Calibration(machine="m", date="d", torch="t", threads=1, workloads={
        mode: WorkloadCalibration(model="x", batch=1, seq_len=16, rest_scale=2.0, call_overhead_ms=overheads)})
    return DeviceProfile(name="t", kind="cpu", description="test", sources=["test"], dtype="fp32",
                         peak_tflops={"fp32": 0.1, "bf16": 0.1, "int8": 0.2}, bandwidth_gbs=10.0, cache_mb=0.0,
                         overhead_us=2.0, kernels={"w8": W8}, calibration=calib,
                         table=[TableEntry(format=f, m=1, k=k, n=n, ms=ms)
                                for k, n in ((64, 64), (64, 192), (192, 64), (64, 128))
                                for f, ms in (("dense", 0.05), ("w8", 0.03))])


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama")


def _by_op(report) -> dict[tuple[str, str, int, int], float]:
    return {(o.op.layer, o.op.kind, o.op.k, o.op.n): o.ms for o in report.ops}


def test_each_kernel_call_and_activation_hook_gets_its_overhead(llama):
    name = next(n for n in llama.info.layers if n.endswith("q_proj"))
    plain, extra = TableLatency(_profile({})), TableLatency(_profile({"w8": 0.2, ACT_QUANT: 0.5, "dense": 9.0}))
    plan = CompressionPlan({name: LayerPlan(bits=8, group_size=None), "lm_head": LayerPlan(bits=8, group_size=None)})
    a, b = plain.predict(plan, llama.info, DECODE), extra.predict(plan, llama.info, DECODE)
    calls = kernel_calls(plain, plan, llama.info, DECODE, "w8")
    assert calls >= 1
    assert b.total_ms == pytest.approx(a.total_ms + 0.2 * calls)  # "dense" is never a kernel format
    before, after = _by_op(a), _by_op(b)
    q = next(k for k in before if k[0] == name and k[1] == "gemm")
    assert after[q] == pytest.approx(before[q] + 0.2)
    hooked = CompressionPlan({name: LayerPlan(bits=4, group_size=None, act_bits=8)})  # no w4 kernel: dense + hook
    ha, hb = plain.predict(hooked, llama.info, DECODE), extra.predict(hooked, llama.info, DECODE)
    assert kernel_calls(plain, hooked, llama.info, DECODE, ACT_QUANT) == 1
    assert hb.total_ms == pytest.approx(ha.total_ms + 0.5)


def test_overheads_belong_to_their_mode_and_never_price_a_call_below_its_floor(llama):
    prefill = Workload(batch=1, seq_len=16, mode="prefill")
    plan = CompressionPlan({n: LayerPlan(bits=8, group_size=None) for n in llama.info.layers})
    decode_only = TableLatency(_profile({"w8": 0.2}, mode="decode"))
    assert decode_only.call_overheads("prefill") == {}
    assert decode_only.predict(plan, llama.info, prefill).total_ms == pytest.approx(
        TableLatency(_profile({})).predict(plan, llama.info, prefill).total_ms)
    negative = TableLatency(_profile({"w8": -100.0})).predict(plan, llama.info, DECODE)
    plain = TableLatency(_profile({})).predict(plan, llama.info, DECODE)
    for o, p in zip(negative.ops, plain.ops):
        assert o.ms == pytest.approx(p.ms * (MIN_SHARE if o.op.kind == "gemm" and o.op.fmt == "w8" else 1.0))


def test_overhead_is_the_measured_minus_predicted_ratio_per_call(llama, monkeypatch):
    """The formula, with the whole-model timing replaced by known ratios: the uniform w8 plan measured at 0.9 of
    the dense model, then the 4-bit plan with int8 activations (which runs dense here: no w4 entries) at 1.2."""
    profile = _profile({})
    measured = {"w8": 0.9, ACT_QUANT: 1.2}
    ratios = iter(measured.values())
    monkeypatch.setattr(call_overhead, "interleaved_ratio", lambda anchor, step, pairs: next(ratios))
    monkeypatch.setattr(call_overhead, "build_real_model", lambda model, plan, device: torch.nn.Identity())
    monkeypatch.setattr("autocompress.evaluators.latency.measured.model_step", lambda m, w, d: (lambda: 1.0))
    got = call_overhead.measure_call_overheads(llama.model, llama.info, "cpu", DECODE, profile,
                                              {"w8": W8, "w4": W4})
    assert set(got) == {"w8", ACT_QUANT}  # the profile has no w4 entries: no call runs that kernel
    table = TableLatency(profile, call_overhead_ms={})
    dense = table.predict(CompressionPlan({}), llama.info, DECODE).total_ms
    for fmt in ("w8", ACT_QUANT):
        table = TableLatency(profile, call_overhead_ms={k: v for k, v in got.items() if k != fmt})
        plan = uniform_plan(llama.info, "w4", W4, act_bits=8) if fmt == ACT_QUANT else \
            uniform_plan(llama.info, "w8", W8)
        predicted = table.predict(plan, llama.info, DECODE).total_ms / dense
        calls = kernel_calls(table, plan, llama.info, DECODE, fmt)
        assert got[fmt] == pytest.approx((measured[fmt] - predicted) * dense / calls, rel=1e-3)
        # with the measured overhead the table predicts exactly the measured ratio for the uniform plan
        assert TableLatency(profile, call_overhead_ms=got).predict(plan, llama.info, DECODE).total_ms / dense \
            == pytest.approx(measured[fmt], rel=1e-3)


def test_calibration_measures_every_kernel_format_in_the_model_and_saves_it(llama, tmp_path):
    from autocompress.evaluators.latency import gemm_table as module

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(module, "MAX_COPIES", 2)
            profile = calibrate(llama.model, llama.info, device="cpu", workload=DECODE, model_name="random:llama",
                                repeats=3, min_total_s=0.005, passes=1, bandwidth_mb=16)
    finally:
        torch.set_num_threads(threads)
    got = profile.calibration.workloads["decode"].call_overhead_ms
    table = TableLatency(profile, call_overhead_ms={})
    expected = {f for f, k in kernel_entries("cpu").items()
                if kernel_calls(table, uniform_plan(llama.info, f, k), llama.info, DECODE, f)}
    if any(f not in ("w8a8", "w8") for f in kernel_entries("cpu")):
        expected.add(ACT_QUANT)
    assert set(got) == expected and all(math.isfinite(v) for v in got.values())
    if "w8" in available_formats("cpu"):
        assert "w8" in got  # llama's Linears take the int8 weight-only kernel (in_features 64 % 16 == 0)
    saved = load_profile(save_profile(profile, tmp_path / "p.yaml"))
    assert saved.calibration.call_overheads("decode") == got
    ops = plan_ops(uniform_plan(llama.info, "w8", W8), llama.info, DECODE)
    assert any(op.fmt == "w8" for op in ops)


def test_uniform_plan_of_a_sparsity_format_prunes_every_linear_to_that_pattern(llama):
    """CUDA's calibration measures the "2:4" kernel's in-model cost: its uniform plan is every Linear pruned
    2:4 and left unquantized, which the latency models price as format "2:4"."""
    plan = uniform_plan(llama.info, "2:4", Kernel(fast=True))
    assert set(plan.layers) == set(llama.info.layers)
    assert all(e.pattern == "2:4" and e.sparsity == 0.5 and e.bits is None for e in plan.layers.values())
    ops = [op for op in plan_ops(plan, llama.info, DECODE) if op.kind == "gemm" and op.fmt != "dense"]
    assert ops and all(op.fmt == "2:4" for op in ops)
