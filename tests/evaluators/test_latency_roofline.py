"""The roofline latency model with weight layouts: a layer runs a device's kernel only when the kernel takes
its layout, and the roofline, the table and the measured model agree on which layers those are."""

from __future__ import annotations

import pytest
from torch import nn

from autocompress.evaluators.latency._base import Op, Workload, plan_ops
from autocompress.evaluators.latency.kernels import available_formats, build_real_model
from autocompress.evaluators.latency.roofline import RooflineLatency, op_time, weight_bytes_per_value
from autocompress.export.kernels import CPU_KERNELS, KERNELS
from autocompress.hardware.profile import DeviceProfile, Kernel
from autocompress.loading import load_model
from autocompress.modules import LowRankLinear
from autocompress.plan import CompressionPlan, LayerPlan

DECODE = Workload(batch=1, seq_len=128, mode="decode")


def _cpu(**kernels: Kernel) -> DeviceProfile:
    """A memory-bound CPU: 10 GB/s, 1 TFLOP/s, no launch overhead."""
    return DeviceProfile(name="cpu", kind="cpu", description="test", sources=["test"], dtype="fp32",
                         peak_tflops={"fp32": 1.0, "bf16": 1.0, "int8": 2.0}, bandwidth_gbs=10.0, cache_mb=0.0,
                         overhead_us=0.0, kernels=kernels)


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama")


def test_decode_4bit_g32_runs_the_int4_kernel_and_per_channel_runs_dense():
    profile = _cpu(**CPU_KERNELS)
    g32 = Op("x", "gemm", 1, 576, 1536, "w4", 32)
    per_channel = Op("x", "gemm", 1, 576, 1536, "w4", None)
    dense = Op("x", "gemm", 1, 576, 1536)
    ms_g32, bound = op_time(g32, profile, "decode")
    assert bound == "memory"
    weights = 576 * 1536 * (0.5 + 4 / 32)  # 4-bit values, a 16-bit scale and offset per 32 inputs
    assert ms_g32 == pytest.approx((weights + (576 + 1536) * 4) / 10e9 * 1e3)
    assert op_time(per_channel, profile, "decode")[0] == pytest.approx(op_time(dense, profile, "decode")[0])
    assert ms_g32 < op_time(dense, profile, "decode")[0] / 5
    # int8 weight-only: per output channel only
    assert op_time(Op("x", "gemm", 1, 576, 1536, "w8", None), profile)[0] < op_time(dense, profile)[0] / 3
    assert op_time(Op("x", "gemm", 1, 576, 1536, "w8", 64), profile)[0] == op_time(dense, profile)[0]


def test_scale_bytes_follow_the_group_size():
    profile = _cpu()
    assert weight_bytes_per_value("w4", profile, 32, 576) == pytest.approx(0.5 + 4 / 32)
    assert weight_bytes_per_value("w4", profile, 128, 576) == pytest.approx(0.5 + 4 / 128)
    assert weight_bytes_per_value("w8", profile, None, 576) == pytest.approx(1 + 4 / 576)
    assert weight_bytes_per_value("w4", profile, 1024, 576) == pytest.approx(0.5 + 4 / 576)  # one group per row
    assert weight_bytes_per_value("dense", profile, None, 576) == 4.0


def test_plan_ops_carry_the_group_size_and_symmetry(llama):
    names = llama.info.targets_by_default()
    plan = CompressionPlan({names[0]: LayerPlan(bits=4, group_size=32), names[1]: LayerPlan(bits=8, act_bits=8,
                            symmetric=False, group_size=None), names[2]: LayerPlan(rank=8, bits=4, group_size=64)})
    ops = {(op.layer, op.k, op.n): op for op in plan_ops(plan, llama.info, DECODE) if op.kind == "gemm"}
    first = next(op for key, op in ops.items() if key[0] == names[0])
    assert (first.fmt, first.group_size) == ("w4", 32)
    second = next(op for key, op in ops.items() if key[0] == names[1])
    assert (second.fmt, second.group_size) == ("w8", None)  # asymmetric W8A8: int8 weights, activations hooked
    factors = [op for key, op in ops.items() if key[0] == names[2]]
    assert len(factors) == 2 and all((op.fmt, op.group_size) == ("w4", 64) for op in factors)


def test_rest_scale_per_mode():
    from autocompress.hardware.profile import Calibration

    calib = Calibration(machine="m", date="d", torch="t", threads=1, workloads={
        "prefill": {"model": "a", "batch": 1, "seq_len": 128, "rest_scale": 2.0},
        "decode": {"model": "b", "batch": 1, "seq_len": 128, "rest_scale": 6.0}})
    profile = _cpu().model_copy(update={"calibration": calib})
    op = Op("blk.elementwise", "elementwise", elements=1e6, kernels=6)
    base = op_time(op, _cpu())[0]
    assert op_time(op, profile, "prefill")[0] == pytest.approx(2.0 * base)
    assert op_time(op, profile, "decode")[0] == pytest.approx(6.0 * base)


def test_roofline_and_measured_model_agree_on_which_layers_run_a_kernel(llama):
    """Every GEMM the roofline prices with a fast kernel is a kernel module in the measured model, and every
    other planned GEMM is a plain dense Linear there."""
    info = llama.info
    formats = available_formats("cpu")
    if not {"w8", "w4"} <= set(formats):
        pytest.skip("torch here lacks the CPU weight-only kernels")
    names = info.targets_by_default()
    settings = [LayerPlan(bits=4, group_size=32), LayerPlan(bits=4, group_size=None), LayerPlan(bits=4, group_size=16),
                LayerPlan(bits=8, group_size=None), LayerPlan(bits=8, group_size=32), LayerPlan(bits=3, group_size=32),
                LayerPlan(bits=8, act_bits=8, group_size=None), LayerPlan(rank=8, bits=4, group_size=32),
                LayerPlan(rank=16, bits=8, group_size=None), LayerPlan(bits=4, group_size=64)]
    plan = CompressionPlan({n: settings[i % len(settings)] for i, n in enumerate(names)})
    profile = _cpu(**{f: CPU_KERNELS[f] for f in formats if f in CPU_KERNELS})
    model = build_real_model(llama.model, plan, "cpu")
    kernel_types = tuple(KERNELS.values())
    seen = {True: 0, False: 0}
    for name in names:
        module = model.get_submodule(name)
        parts = [module.down, module.up] if isinstance(module, LowRankLinear) else [module]
        ops = [op for op in plan_ops(plan, info, DECODE) if op.layer == name and op.kind == "gemm"]
        assert len(ops) == len(parts)
        for op, part in zip(ops, parts):
            fast = profile.kernel_for(op.fmt, op.group_size, op.k, op.n).fast
            assert isinstance(part, kernel_types) == fast, (name, op)
            if not fast:
                assert isinstance(part, nn.Linear) or type(part).__name__ == "Conv1D"
            seen[fast] += 1
    assert seen[True] and seen[False]
    total = RooflineLatency(profile).predict(plan, info, DECODE).total_ms
    assert total < RooflineLatency(profile).predict(CompressionPlan({}), info, DECODE).total_ms


def test_int8_activations_without_w8a8_add_an_unscaled_activation_quantization(llama):
    from autocompress.hardware.profile import Calibration

    names = llama.info.targets_by_default()
    plan = CompressionPlan({names[0]: LayerPlan(bits=4, group_size=32, act_bits=8),
                            names[1]: LayerPlan(bits=8, group_size=None, act_bits=8),
                            names[2]: LayerPlan(rank=8, act_bits=8)})
    ops = plan_ops(plan, llama.info, DECODE)
    act = [op for op in ops if op.kind == "act_quant"]
    assert [op.layer for op in act] == [names[0], names[2], names[2]]  # W8A8 quantizes its own input
    k = llama.info.layers[names[0]].in_features
    assert act[0].elements == 4.0 * 1 * k
    calib = Calibration(machine="m", date="d", torch="t", threads=1,
                        workloads={"decode": {"model": "x", "batch": 1, "seq_len": 128, "rest_scale": 9.0}})
    profile = _cpu().model_copy(update={"calibration": calib, "overhead_us": 5.0})
    assert op_time(act[0], profile, "decode")[0] == pytest.approx(op_time(act[0], _cpu().model_copy(
        update={"overhead_us": 5.0}), "decode")[0])  # counted launches: no rest scale
