"""`latency calibrate` and the `table` latency model: measured GEMMs, interpolation, fallbacks, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.evaluators.latency._base import Op, Workload, plan_ops
from autocompress.evaluators.latency.calibrate import calibrate, save_profile
from autocompress.evaluators.latency.gemm_table import gemm_shapes
from autocompress.evaluators.latency.roofline import op_time
from autocompress.evaluators.latency.table import TableLatency
from autocompress.evaluators.latency.kernels import available_formats
from autocompress.export.kernels import CPU_KERNELS
from autocompress.hardware.profile import Calibration, DeviceProfile, Kernel, TableEntry, group_key, load_profile
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan

WORKLOAD = Workload(batch=1, seq_len=16)


@pytest.fixture(scope="module", autouse=True)
def quick_timing():
    """One intra-op thread and few weight copies per GEMM: on a shared, busy machine two threads stall each
    other for milliseconds per GEMM, and these tests check what is measured, not how fast."""
    from autocompress.evaluators.latency import gemm_table as module

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "MAX_COPIES", 2)
        yield
    torch.set_num_threads(threads)


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


def _keys(profile: DeviceProfile) -> set[tuple]:
    return {(e.format, e.group, e.m, e.k, e.n) for e in profile.table}


def _expected_layouts(k: int, n: int) -> set[tuple[str, int | None]]:
    """The (format, group) entries a shape [k, n] must have on this CPU: the export's kernels that take it."""
    out = {("dense", None)}
    for fmt in available_formats("cpu"):
        kernel = CPU_KERNELS.get(fmt)
        if kernel is None:
            continue
        for g in ([None] if kernel.per_channel else []) + list(kernel.groups):
            if kernel.takes(g, k, n):
                out.add((fmt, group_key(g, k)))
    return out


def test_calibrate_returns_a_valid_profile(calibrated, bert):
    profile, calls = calibrated
    assert profile.name == "cpu-local" and profile.kind == "cpu" and profile.dtype == "fp32"
    formats = available_formats("cpu")
    assert {e.format for e in profile.table} == set(formats)
    keys = _keys(profile)
    assert len(keys) == len(profile.table)  # deduplicated
    for m, k, n in gemm_shapes(bert.info, WORKLOAD):
        for fmt, group in _expected_layouts(k, n):
            assert (fmt, group, m, k, n) in keys, (fmt, group, m, k, n)
    # only layouts a kernel takes: no 4-bit per-channel entry from a 4-bit shape that no group fits
    kernels = {f: CPU_KERNELS[f] for f in formats[1:]}
    assert all(f == "dense" or kernels[f].takes(k if g is None else g, k, n) for f, g, m, k, n in keys)
    if "w4" in formats:
        assert any(f == "w4" and g == 32 for f, g, *_ in keys)
    dense_ops = [op for op in plan_ops(CompressionPlan({}), bert.info, WORKLOAD) if op.kind == "gemm"]
    assert all(("dense", None, op.m, op.k, op.n) in keys for op in dense_ops)
    assert all(e.ms > 0 for e in profile.table)
    assert profile.peak_tflops["fp32"] > 0 and profile.peak_tflops["int8"] > 0
    assert profile.bandwidth_gbs > 0 and profile.overhead_us > 0
    assert profile.efficiency.compute == 1.0 and profile.efficiency.memory == 1.0
    assert list(profile.kernels) == formats[1:]  # the export's CPU kernels, with the layouts each takes
    for fmt in formats[1:]:
        assert profile.kernels[fmt].fast and profile.kernels[fmt].groups == CPU_KERNELS[fmt].groups
    assert profile.kernels["w8a8"].compute == "int8"
    if "w4" in formats:
        assert profile.kernels["w4"].compute == "bf16" and profile.peak_tflops["bf16"] > 0
    c = profile.calibration
    assert list(c.workloads) == ["prefill"]
    w = c.workloads["prefill"]
    assert w.rest_scale > 0 and w.batch == 1 and w.seq_len == 16 and w.model == "random:bert"
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
    table = {(e.format, e.group, e.m, e.k, e.n): e.ms for e in profile.table}

    def key(op):
        return op.fmt, group_key(op.group_size, op.k), op.m, op.k, op.n

    ops = plan_ops(plan, bert.info, WORKLOAD)
    gemms = [op for op in ops if op.kind == "gemm"]
    assert all(key(op) in table for op in gemms)
    expected = (sum(table[key(op)] for op in gemms)
                + sum(op_time(op, profile)[0] for op in ops if op.kind != "gemm"))
    report = TableLatency(profile, call_overhead_ms={}).predict(plan, bert.info, WORKLOAD)  # the table alone
    assert report.model == "table"
    assert report.total_ms == pytest.approx(expected, rel=1e-9)
    for o in report.ops:
        if o.op.kind == "gemm":
            assert o.ms == table[key(o.op)]
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
    extra = 64 * 64 * (0.5 + 4 / 64 + 4) / 10e9 * 1e3  # 4-bit values, a 4-byte scale per row of 64, fp32
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


@pytest.fixture
def quick_calibrate(monkeypatch):
    """The CLI's calibration with few, short timings (the measurements' count and kinds are the same)."""
    import functools

    from autocompress.evaluators.latency import calibrate as module

    monkeypatch.setattr(module, "calibrate", functools.partial(module.calibrate, repeats=3, min_total_s=0.005,
                                                               passes=1, bandwidth_mb=16))


def test_cli_calibrate_writes_a_profile(tmp_path, capsys, quick_calibrate):
    out = tmp_path / "mine.yaml"
    code = main(["latency", "calibrate", "--model", "random:bert", "--out", str(out), "--seq-len", "8",
                 "--name", "mine"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    profile = load_profile(str(out))
    assert profile.name == "mine" and profile.calibration.workloads["prefill"].seq_len == 8
    assert "rest_scale" in text and "bandwidth" in text and str(out) in text


DECODE = Workload(batch=1, seq_len=16, mode="decode")


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama")


@pytest.fixture(scope="module")
def decode_profile(llama):
    return calibrate(llama.model, llama.info, device="cpu", workload=DECODE, model_name="random:llama",
                     repeats=3, min_total_s=0.005, passes=1, bandwidth_mb=16)


def test_calibrate_decode_measures_every_m_batch_gemm_in_every_layout(decode_profile, llama):
    keys = _keys(decode_profile)
    assert {m for _, _, m, _, _ in keys} == {DECODE.batch}  # a decode step: one token per sequence
    gemms = [op for op in plan_ops(CompressionPlan({}), llama.info, DECODE) if op.kind == "gemm"]
    assert any(op.layer == "lm_head" for op in gemms)  # the LM head runs for the new position
    for op in gemms:
        for fmt, group in _expected_layouts(op.k, op.n):
            assert (fmt, group, op.m, op.k, op.n) in keys, (fmt, group, op.layer)
    if "w4" in available_formats("cpu"):
        assert ("w4", 32, 1, 64, 192) in keys  # gate/up [192, 64]: 4-bit, 32 inputs per scale
        assert not any(f == "w4" and (k, n) == (64, 30522) for f, _, _, k, n in keys)  # vocab % 16 != 0
    c = decode_profile.calibration
    assert list(c.workloads) == ["decode"] and c.workloads["decode"].seq_len == 16 and c.rest_scale("decode") > 0


def test_calibrate_decode_refuses_an_encoder(bert):
    with pytest.raises(UserError, match="causal"):
        calibrate(bert.model, bert.info, workload=DECODE, passes=1)


def test_decode_prices_int4_groups_with_the_kernel_and_per_channel_4bit_dense(decode_profile, llama):
    if "w4" not in available_formats("cpu"):
        pytest.skip("torch here has no int4 CPU kernel")
    model = TableLatency(decode_profile, call_overhead_ms={})  # the table alone
    name = "model.layers.0.mlp.up_proj"
    table = {(e.format, e.group, e.m, e.k, e.n): e.ms for e in decode_profile.table}

    def op_of(plan):
        return next(o for o in model.predict(plan, llama.info, DECODE).ops if o.op.layer == name)

    g32 = op_of(CompressionPlan({name: LayerPlan(bits=4, group_size=32)}))
    assert g32.op.fmt == "w4" and g32.op.group_size == 32 and model.runs_kernel(g32.op)
    assert g32.ms == table[("w4", 32, 1, 64, 192)]
    per_channel = op_of(CompressionPlan({name: LayerPlan(bits=4, group_size=None)}))
    assert not model.runs_kernel(per_channel.op)
    assert per_channel.ms == table[("dense", None, 1, 64, 192)]
    g16 = op_of(CompressionPlan({name: LayerPlan(bits=4, group_size=16)}))  # a group size the kernel does not take
    assert g16.ms == table[("dense", None, 1, 64, 192)]
    w8 = op_of(CompressionPlan({name: LayerPlan(bits=8, group_size=None)}))
    assert w8.ms == table[("w8", None, 1, 64, 192)]
    # the roofline agrees on which layers run a kernel: 4-bit bytes for g32, fp32 bytes for per channel (priced
    # with equal compute peaks for every type, so the comparison is of bytes read, not of the peaks this
    # quick calibration happened to measure on a busy machine)
    assert decode_profile.kernel_for("w4", 32, g32.op.k, g32.op.n).fast
    assert not decode_profile.kernel_for("w4", None, per_channel.op.k, per_channel.op.n).fast
    even = decode_profile.model_copy(update={"peak_tflops": {k: 1e3 for k in decode_profile.peak_tflops}})
    roof_g32, _ = op_time(g32.op, even, "decode")
    roof_dense, _ = op_time(per_channel.op, even, "decode")
    assert roof_g32 < roof_dense


def test_merge_keeps_both_workloads_and_tables(calibrated, decode_profile, tmp_path):
    from autocompress.evaluators.latency.calibrate import merge_profiles

    prefill, _ = calibrated
    merged = merge_profiles(prefill, decode_profile)
    assert set(merged.calibration.workloads) == {"prefill", "decode"}
    assert merged.calibration.rest_scale("prefill") == prefill.calibration.rest_scale("prefill")
    assert merged.calibration.rest_scale("decode") == decode_profile.calibration.rest_scale("decode")
    assert _keys(merged) == _keys(prefill) | _keys(decode_profile)
    assert all(merged.peak_tflops[k] >= max(prefill.peak_tflops.get(k, 0), decode_profile.peak_tflops.get(k, 0))
               for k in merged.peak_tflops)
    path = save_profile(merged, tmp_path / "both.yaml")
    assert load_profile(str(path)) == merged
    text = path.read_text()
    assert "# prefill: random:bert" in text and "# decode: random:llama" in text
    # each workload keeps its own date: an update does not re-date what it did not measure
    old = prefill.model_copy(update={"calibration": prefill.calibration.model_copy(update={
        "date": "2000-01-01", "workloads": {"prefill": prefill.calibration.workloads["prefill"].model_copy(
            update={"date": None})}})})
    dated = merge_profiles(old, decode_profile).calibration
    assert dated.workloads["prefill"].date == "2000-01-01"
    assert dated.workloads["decode"].date == decode_profile.calibration.date == dated.date != "2000-01-01"
    spec = load_profile("h100-sxm")
    with pytest.raises(UserError, match="calibrated"):
        merge_profiles(spec, decode_profile)


def test_cli_calibrate_decode_updates_a_profile(tmp_path, capsys, quick_calibrate):
    first = tmp_path / "p.yaml"
    assert main(["latency", "calibrate", "--model", "random:bert", "--out", str(first), "--seq-len", "8"]) == 0
    both = tmp_path / "both.yaml"
    code = main(["latency", "calibrate", "--model", "random:llama", "--mode", "decode", "--seq-len", "16",
                 "--update", str(first), "--out", str(both)])
    text = capsys.readouterr().out
    assert code == 0
    profile = load_profile(str(both))
    assert set(profile.calibration.workloads) == {"prefill", "decode"}
    assert "decode" in text and "prefill" in text
    # an encoder cannot decode; a spec-sheet profile cannot be updated: exit 2, nothing written
    assert main(["latency", "calibrate", "--model", "random:bert", "--mode", "decode", "--out",
                 str(tmp_path / "x.yaml")]) == 2
    assert main(["latency", "calibrate", "--model", "random:llama", "--update", "h100-sxm", "--out",
                 str(tmp_path / "y.yaml")]) == 2
    assert not (tmp_path / "x.yaml").exists() and not (tmp_path / "y.yaml").exists()
