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
    w8a8 = _total("xeon-sapphire-rapids", uniform_plan(info, LayerPlan(bits=8, act_bits=8)), info)
    assert w8a8 < dense


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
