"""`latency calibrate` and the `table` latency model: measured GEMMs, interpolation, fallbacks, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.evaluators.latency._base import Op, Workload, plan_ops
from autocompress.evaluators.latency.calibrate import calibrate, gemm_shapes, save_profile
from autocompress.evaluators.latency.roofline import op_time
from autocompress.evaluators.latency.table import TableLatency
from autocompress.hardware.profile import Calibration, DeviceProfile, Kernel, TableEntry, load_profile
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan

WORKLOAD = Workload(batch=1, seq_len=16)


@pytest.fixture(scope="module")
def bert():
    return load_model("random:bert")


@pytest.fixture(scope="module")
def calibrated(bert):
    calls = []
    profile = calibrate(bert.model, bert.info, device="cpu", workload=WORKLOAD, model_name="random:bert",
                        progress=lambda advance, total, desc: calls.append((advance, total, desc)),
                        repeats=3, min_total_s=0.005, passes=1, bandwidth_mb=16)
    return profile, calls


def _profile(table: list[TableEntry], **kw) -> DeviceProfile:
    base = dict(name="t", kind="cpu", description="test", sources=["test"], dtype="fp32",
                peak_tflops={"fp32": 0.1, "int8": 0.2}, bandwidth_gbs=10.0, cache_mb=0.0, overhead_us=2.0,
                calibration=Calibration(machine="m", date="d", torch="t", threads=1, model="x", batch=1,
                                        seq_len=16, rest_scale=3.0),
                table=table)
    base.update(kw)
    return DeviceProfile(**base)


def test_calibrate_returns_a_valid_profile(calibrated, bert):
    profile, calls = calibrated
    assert profile.name == "cpu-local" and profile.kind == "cpu" and profile.dtype == "fp32"
    assert {e.format for e in profile.table} == {"dense", "w8a8"}
    keys = {(e.format, e.m, e.k, e.n) for e in profile.table}
    assert len(keys) == len(profile.table)  # deduplicated
    for m, k, n in gemm_shapes(bert.info, WORKLOAD):
        assert ("dense", m, k, n) in keys and ("w8a8", m, k, n) in keys
    dense_ops = [op for op in plan_ops(CompressionPlan({}), bert.info, WORKLOAD) if op.kind == "gemm"]
    assert all(("dense", op.m, op.k, op.n) in keys for op in dense_ops)
    assert all(e.ms > 0 for e in profile.table)
    assert profile.peak_tflops["fp32"] > 0 and profile.peak_tflops["int8"] > 0
    assert profile.bandwidth_gbs > 0 and profile.overhead_us > 0
    assert profile.efficiency.compute == 1.0 and profile.efficiency.memory == 1.0
    assert list(profile.kernels) == ["w8a8"]
    assert profile.kernels["w8a8"].fast and profile.kernels["w8a8"].compute == "int8"
    c = profile.calibration
    assert c.rest_scale > 0 and c.batch == 1 and c.seq_len == 16 and c.model == "random:bert"
    assert c.threads == torch.get_num_threads() and c.torch == torch.__version__
    assert "measured by autocompress latency calibrate" in profile.sources[0]
    total = calls[0][1]
    assert sum(a for a, _, _ in calls) == total == len(profile.table) + 3


def test_save_and_load_round_trip(calibrated, tmp_path):
    profile, _ = calibrated
    path = save_profile(profile, tmp_path / "local.yaml")
    assert path.read_text().startswith("# Device profile measured by `autocompress latency calibrate`")
    assert load_profile(str(path)) == profile


def test_table_exact_at_measured_shapes(calibrated, bert):
    profile, _ = calibrated
    plan = CompressionPlan({
        "encoder.layer.0.attention.self.query": LayerPlan(rank=0.25),
        "encoder.layer.0.intermediate.dense": LayerPlan(bits=8, act_bits=8),
        "encoder.layer.1.intermediate": LayerPlan(sparsity=0.5, pattern="structured"),
        "encoder.layer.1.attention.self": LayerPlan(sparsity=0.5, pattern="structured"),
    })
    table = {(e.format, e.m, e.k, e.n): e.ms for e in profile.table}
    ops = plan_ops(plan, bert.info, WORKLOAD)
    gemms = [op for op in ops if op.kind == "gemm"]
    assert all((op.fmt, op.m, op.k, op.n) in table for op in gemms)
    expected = (sum(table[(op.fmt, op.m, op.k, op.n)] for op in gemms)
                + sum(op_time(op, profile)[0] for op in ops if op.kind != "gemm"))
    report = TableLatency(profile).predict(plan, bert.info, WORKLOAD)
    assert report.model == "table"
    assert report.total_ms == pytest.approx(expected, rel=1e-9)
    for o in report.ops:
        if o.op.kind == "gemm":
            assert o.ms == table[(o.op.fmt, o.op.m, o.op.k, o.op.n)]
            assert o.bottleneck in ("compute", "memory", "overhead")


def test_interpolation_lies_between_the_measured_neighbours():
    profile = _profile([TableEntry(format="dense", m=16, k=64, n=64, ms=0.01),
                        TableEntry(format="dense", m=16, k=64, n=256, ms=0.04),
                        TableEntry(format="dense", m=16, k=64, n=1024, ms=0.2)])
    model = TableLatency(profile)

    def at(n: int) -> float:
        return model.gemm_ms(Op("x", "gemm", 16, 64, n))

    assert at(64) == 0.01 and at(256) == 0.04 and at(1024) == 0.2  # exact at measured points
    assert 0.01 < at(128) < 0.04
    assert 0.04 < at(512) < 0.2
    ns = [64, 96, 128, 192, 256, 384, 512, 768, 1024]
    assert all(at(a) <= at(b) for a, b in zip(ns, ns[1:]))  # monotone in FLOPs
    assert at(32) == pytest.approx(0.01)  # below the smallest: flat (overhead)
    assert at(2048) == pytest.approx(0.4)  # above the largest: proportional to FLOPs
    # k and n swapped: same FLOPs, interpolated on the same curve
    assert model.gemm_ms(Op("x", "gemm", 16, 256, 64)) == pytest.approx(0.04)


def test_interpolation_is_monotone_despite_noise_and_prefers_the_same_m():
    profile = _profile([TableEntry(format="dense", m=16, k=64, n=64, ms=0.05),  # noisy: slower than bigger
                        TableEntry(format="dense", m=16, k=64, n=128, ms=0.02),
                        TableEntry(format="dense", m=16, k=64, n=256, ms=0.04),
                        TableEntry(format="dense", m=1, k=64, n=64, ms=0.003),
                        TableEntry(format="dense", m=1, k=64, n=256, ms=0.006)])
    model = TableLatency(profile)
    ns = [64, 80, 96, 128, 160, 192, 256]
    values = [model.gemm_ms(Op("x", "gemm", 16, 64, n)) if n not in (64, 128, 256) else None for n in ns]
    interp = [v for v in values if v is not None]
    assert all(a <= b for a, b in zip(interp, interp[1:]))
    # m = 1 (a decode step) interpolates among the m = 1 entries, not the prefill ones
    assert 0.003 < model.gemm_ms(Op("x", "gemm", 1, 64, 128)) < 0.006


def test_missing_format_falls_back_to_dense():
    dense = [TableEntry(format="dense", m=16, k=64, n=64, ms=0.01),
             TableEntry(format="dense", m=16, k=64, n=256, ms=0.04)]
    model = TableLatency(_profile(dense))
    for fmt in ("w8a8", "w4", "2:4"):
        assert model.gemm_ms(Op("x", "gemm", 16, 64, 64, fmt)) == 0.01
        assert model.gemm_ms(Op("x", "gemm", 16, 64, 128, fmt)) == model.gemm_ms(Op("x", "gemm", 16, 64, 128))
    # a format with its own entries uses them, not dense
    model = TableLatency(_profile(dense + [TableEntry(format="w8a8", m=16, k=64, n=64, ms=0.005)]))
    assert model.gemm_ms(Op("x", "gemm", 16, 64, 64, "w8a8")) == 0.005
    # fallback: dequant adds a pass over the packed and the dequantized weights
    prof = _profile(dense, kernels={"w4": Kernel(fast=False, fallback="dequant")})
    extra = 64 * 64 * (0.5 + 2 / 128 + 4) / 10e9 * 1e3
    assert TableLatency(prof).gemm_ms(Op("x", "gemm", 16, 64, 64, "w4")) == pytest.approx(0.01 + extra)


def test_profile_without_table_is_a_user_error():
    with pytest.raises(UserError, match="autocompress latency calibrate"):
        TableLatency(_profile([]))
    with pytest.raises(UserError, match="autocompress latency calibrate"):
        TableLatency(None)


def test_cli_predict_plan_prints_per_layer_rows(tmp_path, capsys):
    plan = CompressionPlan({"encoder.layer.0.intermediate.dense": LayerPlan(bits=8, act_bits=8),
                            "encoder.layer.1.attention.self.query": LayerPlan(rank=0.25)})
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    code = main(["latency", "predict", str(path), "--profile", "cpu-local", "--model", "random:bert",
                 "--latency-model", "table", "--seq-len", "16"])
    out = capsys.readouterr().out
    assert code == 0
    for layer in ("encoder.layer.0.intermediate.dense", "encoder.layer.1.attention.self.query", "pooler.dense",
                  "encoder.layer.0.attention", "embeddings"):
        assert layer in out
    assert "total:" in out and "ms" in out
    assert any(b in out for b in ("compute", "memory", "overhead"))


def test_cli_predict_plan_needs_a_model(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"autocompress_plan": 1, "layers": {}}))
    assert main(["latency", "predict", str(path), "--profile", "cpu-local"]) == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_calibrate_cuda_without_gpu_exits_2(tmp_path, capsys):
    code = main(["latency", "calibrate", "--device", "cuda", "--model", "random:bert",
                 "--out", str(tmp_path / "gpu.yaml")])
    assert code == 2
    assert "cuda" in capsys.readouterr().err.lower()
    assert not (tmp_path / "gpu.yaml").exists()


def test_cli_calibrate_writes_a_profile(tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    code = main(["latency", "calibrate", "--model", "random:bert", "--out", str(out), "--seq-len", "8",
                 "--name", "mine"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    profile = load_profile(str(out))
    assert profile.name == "mine" and profile.calibration.seq_len == 8
    assert "rest_scale" in text and "bandwidth" in text and str(out) in text
