"""The shipped device profiles: they load, cite sources, name only known formats, and the roofline built
on them says what the measurements behind them say (no fast 4-bit kernel on an H100; W8A8 pays on a Xeon)."""

from __future__ import annotations

import math

import pytest
import yaml

from autocompress.errors import UserError
from autocompress.evaluators.latency import LATENCY_MODELS, Workload
from autocompress.hardware import FORMATS, list_profiles, load_profile
from autocompress.hardware.profile import PROFILE_DIR
from autocompress.plan import LayerPlan
from autocompress.selection import uniform_plan

SHIPPED = ("h100-sxm", "a100-sxm", "l4", "jetson-orin-agx", "rpi5", "xeon-sapphire-rapids", "apple-m2")
CPUS = ("rpi5", "xeon-sapphire-rapids", "apple-m2")


@pytest.fixture(scope="module")
def info(minilm):
    return minilm.info


BATCH1 = Workload(batch=1, seq_len=128)


def _total(profile_name: str, plan, info, workload: Workload = BATCH1) -> float:
    model = LATENCY_MODELS.get("roofline")(load_profile(profile_name))
    return model.predict(plan, info, workload).total_ms


def test_list_profiles_includes_the_shipped_seven():
    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_is_well_formed(name):
    profile = load_profile(name)
    assert profile.name == name
    assert len(profile.sources) >= 1 and all(s.strip() for s in profile.sources)
    assert profile.peak_tflops.get(profile.dtype, 0) > 0, "needs a peak for its deployment dtype"
    assert all(v > 0 for v in profile.peak_tflops.values())
    assert set(profile.kernels) <= set(FORMATS)
    assert profile.kernel("dense").fast
    assert profile.dtype in (("bf16", "fp16") if profile.kind == "gpu" else ("fp32",))
    for fmt, kernel in profile.kernels.items():
        if kernel.fast and kernel.compute:
            assert kernel.compute in profile.peak_tflops, f"{name}: {fmt} computes in {kernel.compute} without a peak"
    # spec-sheet profiles: uncalibrated, and say so
    assert profile.efficiency.compute == 1.0 and profile.efficiency.memory == 1.0
    assert profile.calibration is None and not profile.table
    assert "uncalibrated" in profile.description.lower()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_file_cites_sources_in_its_header(name):
    text = (PROFILE_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    assert text.startswith("#"), "each profile opens with a comment block citing its sources"


def test_unknown_profile_lists_the_shipped_ones():
    with pytest.raises(UserError) as exc:
        load_profile("nope")
    message = str(exc.value)
    assert "'nope'" in message
    for name in SHIPPED:
        assert name in message


def _write_variant(tmp_path, **changes):
    data = yaml.safe_load((PROFILE_DIR / "h100-sxm.yaml").read_text(encoding="utf-8"))
    data.update(changes)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_profile_with_unknown_key_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match="bogus_key"):
        load_profile(_write_variant(tmp_path, bogus_key=1))


def test_profile_with_negative_bandwidth_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match="bandwidth_gbs"):
        load_profile(_write_variant(tmp_path, bandwidth_gbs=-1.0))


def test_profile_with_a_repeated_key_is_a_user_error_naming_it_and_its_lines(tmp_path):
    path = _write_variant(tmp_path)
    path.write_text(path.read_text(encoding="utf-8") + "bandwidth_gbs: 1.0\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"duplicate key 'bandwidth_gbs' \(lines \d+ and \d+\)"):
        load_profile(path)


def test_profile_file_round_trips_unchanged(tmp_path):
    assert load_profile(_write_variant(tmp_path)) == load_profile("h100-sxm")


def test_h100_has_no_fast_weight_only_4bit_kernel(info):
    dense = _total("h100-sxm", uniform_plan(info, LayerPlan()), info)
    w4 = _total("h100-sxm", uniform_plan(info, LayerPlan(bits=4)), info)
    assert not load_profile("h100-sxm").kernel("w4").fast
    assert w4 >= dense  # no fast kernel: 4-bit weights are not faster than bf16


def test_h100_kernel_table_follows_the_measurements():
    profile = load_profile("h100-sxm")
    assert profile.dtype == "bf16" and profile.overhead_us == pytest.approx(15.0)
    for fmt in ("w8a8", "w8", "w4", "2:4"):
        kernel = profile.kernel(fmt)
        assert not kernel.fast and kernel.fallback == "dense", fmt
    assert "slower" in profile.kernel("w8a8").note and "slower" in profile.kernel("2:4").note


def test_xeon_w8a8_is_faster_than_dense(info):
    dense = _total("xeon-sapphire-rapids", uniform_plan(info, LayerPlan()), info)
    w8a8 = _total("xeon-sapphire-rapids", uniform_plan(info, LayerPlan(bits=8, act_bits=8, group_size=None)), info)
    assert w8a8 < dense
    # the dynamic int8 Linear takes one scale per output channel: groups of 128 inputs run dense
    grouped = _total("xeon-sapphire-rapids", uniform_plan(info, LayerPlan(bits=8, act_bits=8, group_size=128)), info)
    assert grouped == pytest.approx(dense)


@pytest.mark.parametrize("name", CPUS)
def test_cpu_kernels_int8_only_for_dynamic_quantization(name):
    profile = load_profile(name)
    assert profile.kind == "cpu"
    assert profile.kernel("w8a8").fast and profile.kernel("w8a8").compute == "int8"
    for fmt in ("w8", "w4", "w2", "2:4"):
        assert not profile.kernel(fmt).fast, fmt


@pytest.mark.parametrize("name", SHIPPED)
def test_dense_prediction_is_positive_and_finite(name, info):
    total = _total(name, uniform_plan(info, LayerPlan()), info, Workload(batch=1, seq_len=128))
    assert total > 0 and math.isfinite(total)


def _variant_kernels(tmp_path, kernels):
    data = yaml.safe_load((PROFILE_DIR / "xeon-sapphire-rapids.yaml").read_text(encoding="utf-8"))
    data["kernels"] = kernels
    path = tmp_path / "kernels.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_kernel_weight_layouts_load_and_decide_which_layers_run(tmp_path):
    profile = load_profile(_variant_kernels(tmp_path, {
        "w4": {"fast": True, "compute": "int8", "per_channel": False, "groups": [32, 64, 128, 256], "out_multiple": 16},
        "w8": {"fast": True, "compute": "int8"}}))
    w4, w8 = profile.kernel("w4"), profile.kernel("w8")
    assert w4.groups == (32, 64, 128, 256) and not w4.per_channel and w4.out_multiple == 16
    assert w8.per_channel and w8.groups == () and w8.out_multiple == 1  # the defaults: per output channel only
    assert profile.kernel_for("w4", 32, 576, 1536).fast
    assert profile.kernel_for("w4", 128, 128, 64).fast  # a group as long as the row
    assert not profile.kernel_for("w4", None, 576, 1536).fast  # per channel: no int4 kernel, runs dense
    assert not profile.kernel_for("w4", 128, 576, 1536).fast  # 576 is not a multiple of 128
    assert not profile.kernel_for("w4", 32, 576, 24).fast  # out_features not a multiple of 16
    assert not profile.kernel_for("w4", 16, 576, 1536).fast  # a group size it does not take
    assert profile.kernel_for("w8", None, 576, 1536).fast and profile.kernel_for("w8", 1024, 576, 1536).fast
    assert not profile.kernel_for("w8", 128, 576, 1536).fast
    assert profile.kernel_for("w4", None, 576, 1536).fallback == "dense"
    assert profile.kernel_for("dense", None, 576, 1536).fast


@pytest.mark.parametrize("kernels,match", [
    ({"w4": {"fast": True, "per_channel": False}}, "takes no weight layout"),
    ({"w4": {"fast": True, "groups": [0]}}, "positive"),
    ({"2:4": {"fast": True, "groups": [32]}}, "has none"),
    ({"dense": {"fast": True, "out_multiple": 16}}, "has none"),
])
def test_bad_kernel_layouts_are_user_errors_naming_the_kernel(tmp_path, kernels, match):
    with pytest.raises(UserError, match=match) as exc:
        load_profile(_variant_kernels(tmp_path, kernels))
    assert "kernels" in str(exc.value)


def test_old_one_workload_calibration_loads_as_prefill(tmp_path):
    data = yaml.safe_load((PROFILE_DIR / "h100-sxm.yaml").read_text(encoding="utf-8"))
    data["calibration"] = {"machine": "m", "date": "d", "torch": "t", "threads": 2, "model": "all-MiniLM-L6-v2",
                           "batch": 1, "seq_len": 128, "rest_scale": 2.5}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    c = load_profile(path).calibration
    assert list(c.workloads) == ["prefill"]
    assert c.workloads["prefill"].model == "all-MiniLM-L6-v2" and c.workloads["prefill"].seq_len == 128
    assert c.rest_scale("prefill") == 2.5 and c.rest_scale("decode") == 2.5  # the one it has, for both
    data["calibration"] = {"machine": "m", "date": "d", "torch": "t", "threads": 2, "workloads": {
        "prefill": {"model": "a", "batch": 1, "seq_len": 128, "rest_scale": 2.5},
        "decode": {"model": "b", "batch": 1, "seq_len": 128, "rest_scale": 7.0}}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    c = load_profile(path).calibration
    assert c.rest_scale("prefill") == 2.5 and c.rest_scale("decode") == 7.0


def test_the_measured_cpu_local_profile_loads():
    profile = load_profile("cpu-local")
    assert profile.calibration is not None and "prefill" in profile.calibration.workloads
    assert profile.table and profile.kernel("w8a8").fast


def test_profile_rule_is_the_exports_kernel_choice():
    """One rule: a profile holding the export's CPU kernel entries runs a kernel on exactly the layers the
    packed export runs one on (`export.kernels.kernel_kind`), over a grid of bits, groups, symmetry,
    activation bits and shapes."""
    import torch

    from autocompress.export.kernels import CPU_KERNELS, KIND_OF_FORMAT, has_kernel, kernel_kind
    from autocompress.hardware.profile import DeviceProfile, format_of
    from autocompress.policies.quantize import QuantGrid

    if not all(has_kernel(k) for k in ("w8a8", "int8", "int4")):
        pytest.skip("torch here lacks one of the CPU kernels")
    profile = DeviceProfile(name="p", kind="cpu", description="d", sources=["s"], dtype="fp32",
                            peak_tflops={"fp32": 1.0}, bandwidth_gbs=1.0, cache_mb=0.0, overhead_us=0.0,
                            kernels=CPU_KERNELS)
    checked = 0
    for bits in (2, 3, 4, 8):
        for group in (None, 16, 32, 64, 128, 256, 512):
            for symmetric in (True, False):
                for act_bits in (None, 8):
                    for out_f, in_f in ((48, 256), (24, 256), (64, 96), (32, 576), (1536, 576), (576, 1536),
                                        (128, 128), (16, 512), (32, 40), (16, 8)):
                        groups = 1 if group is None else -(-in_f // group)
                        grid = QuantGrid(bits, group, symmetric, torch.ones(out_f, groups), torch.zeros(out_f, groups))
                        kind = kernel_kind(grid, (out_f, in_f), act_bits)
                        fmt = format_of(bits, act_bits, None, symmetric)
                        runs = profile.kernel_for(fmt, group, in_f, out_f).fast
                        assert runs == (kind is not None), (bits, group, symmetric, act_bits, out_f, in_f, kind)
                        if runs:
                            assert KIND_OF_FORMAT[fmt] == kind
                        checked += 1
    assert checked == 4 * 7 * 2 * 2 * 10
