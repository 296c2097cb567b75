import json

import pytest

from autocompress.errors import UserError
from autocompress.plan import PLAN_VERSION, CompressionPlan, LayerPlan, resolve_rank


def sample_plan() -> CompressionPlan:
    return CompressionPlan({
        "a.q": LayerPlan(bits=4, group_size=32, symmetric=False, quant_method="gptq"),
        "a.k": LayerPlan(bits=3, group_size=None, act_bits=8, sparsity=0.3, prune_method="wanda"),
        "a.v": LayerPlan(pattern="2:4", bits=8),
        "a.o": LayerPlan(rank=0.25, rank_method="whitened", bits=6),
        "a.up": LayerPlan(rank=17),
        "a.ffn": LayerPlan(sparsity=0.125, pattern="structured"),
    })


def test_json_round_trip_is_exact():
    plan = sample_plan()
    again = CompressionPlan.from_json(plan.to_json())
    assert again == plan and hash(again) == hash(plan)
    assert again.to_json() == plan.to_json()
    assert json.loads(plan.to_json())["autocompress_plan"] == PLAN_VERSION
    # floats survive exactly, not just approximately
    odd = CompressionPlan({"x": LayerPlan(sparsity=0.1 + 0.2)})
    assert CompressionPlan.from_json(odd.to_json()).layers["x"].sparsity == 0.1 + 0.2


def test_plan_is_immutable_and_sorted():
    plan = sample_plan()
    with pytest.raises(TypeError):
        plan.layers["new"] = LayerPlan(bits=4)  # type: ignore[index]
    with pytest.raises(AttributeError):
        plan.layers["a.q"].bits = 2  # type: ignore[misc]
    assert list(plan.layers) == sorted(plan.layers)


def test_noop_entries_dropped_and_empty_plan():
    plan = CompressionPlan({"x": LayerPlan(), "y": LayerPlan(bits=4)})
    assert list(plan.layers) == ["y"]
    assert CompressionPlan({}).is_empty and "empty" in str(CompressionPlan({}))


def test_n_m_pattern_sets_sparsity():
    assert LayerPlan(pattern="2:4").sparsity == 0.5
    assert LayerPlan(pattern="1:4").n_m == (1, 4)
    assert LayerPlan(pattern="2:4", sparsity=0.5).sparsity == 0.5


@pytest.mark.parametrize("kwargs, field", [
    (dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(bits=4.0), "bits"), (dict(bits=True), "bits"),
    (dict(sparsity=0.96), "sparsity"), (dict(sparsity=-0.1), "sparsity"), (dict(sparsity=float("nan")), "sparsity"),
    (dict(pattern="4:2"), "pattern"), (dict(pattern="blocky"), "pattern"), (dict(pattern="2:4", sparsity=0.3), "sparsity"),
    (dict(rank=0), "rank"), (dict(rank=1.0), "rank"), (dict(rank=-3), "rank"),
    (dict(group_size=0), "group_size"), (dict(act_bits=4), "act_bits"),
    (dict(quant_method="awq"), "quant_method"), (dict(prune_method="random"), "prune_method"),
    (dict(rank_method="qr"), "rank_method"),
    (dict(rank=8, sparsity=0.5), "rank"), (dict(pattern="structured", sparsity=0.2, bits=4), "structured"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(UserError, match=field):
        LayerPlan(**kwargs)


def test_from_json_errors():
    with pytest.raises(UserError, match="unknown field 'bitz'"):
        CompressionPlan.from_json('{"layers": {"x": {"bitz": 4}}}')
    with pytest.raises(UserError, match="newer"):
        CompressionPlan.from_json(json.dumps({"autocompress_plan": PLAN_VERSION + 1, "layers": {}}))
    with pytest.raises(UserError, match="not valid JSON"):
        CompressionPlan.from_json("{nope")
    with pytest.raises(UserError, match="layer 'x'.*bits"):
        CompressionPlan.from_json('{"layers": {"x": {"bits": 12}}}')
    with pytest.raises(UserError, match="cannot be read"):
        CompressionPlan.load("/nonexistent/plan.json")


def test_flatten_and_table():
    plan = sample_plan()
    flat = plan.flatten()
    assert flat["a.q.bits"] == 4 and flat["a.q.quant_method"] == "gptq" and flat["a.o.rank"] == 0.25
    assert "a.q.symmetric" in flat and "a.v.group_size" not in flat
    text = str(plan)
    assert "a.ffn" in text and "gptq" in text and "2:4" in text and "asym" in text
    assert len(text.splitlines()) == len(plan) + 2
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(plan)
    assert "a.up" in console.export_text()


def test_resolve_rank():
    assert resolve_rank(0.25, 384, 1536) == 96
    assert resolve_rank(0.001, 10, 10) == 1
    assert resolve_rank(17, 384, 384) == 17


def test_summary_counts_settings():
    assert sample_plan().summary() == "bits 3x1 4x1 6x1 8x1; act int8x1; sparsity 2:4x1 30%x1; structured 12%x1; rank 0.25x1 17x1"
    assert CompressionPlan({}).summary() == "empty"


def test_optional_smooth_field():
    old = '{"autocompress_plan": 1, "layers": {"x": {"bits": 8, "act_bits": 8}}}'
    plan = CompressionPlan.from_json(old)
    assert plan.layers["x"].smooth is None and json.loads(plan.to_json()) == json.loads(old)  # written as before
    smoothed = CompressionPlan({"x": LayerPlan(bits=8, act_bits=8, smooth=0.5), "y": LayerPlan(act_bits=8, smooth=1)})
    data = json.loads(smoothed.to_json())
    assert data["autocompress_plan"] == PLAN_VERSION and data["layers"]["x"]["smooth"] == 0.5
    again = CompressionPlan.from_json(smoothed.to_json())
    assert again == smoothed and again.layers["y"].smooth == 1.0 and again != plan
    assert smoothed.flatten()["x.smooth"] == 0.5
    assert smoothed.summary() == "bits 8x1; act int8x2; smooth 0.5x1 1x1"
    text = str(smoothed)
    assert text.splitlines()[0].split() == ["layer", "bits", "group", "sym", "quant", "act", "smooth"]
    assert text.splitlines()[2].split()[-2:] == ["int8", "0.5"] and "smooth" not in str(sample_plan())
    with pytest.raises(UserError, match="layer 'x'.*smooth.*act_bits 8"):
        CompressionPlan.from_json('{"layers": {"x": {"bits": 8, "smooth": 0.5}}}')


def test_optional_distill_field():
    from autocompress.distill_spec import DistillConfig

    old = '{"autocompress_plan": 1, "layers": {"x": {"bits": 4}}}'
    plan = CompressionPlan.from_json(old)
    assert plan.distill is None and json.loads(plan.to_json()) == json.loads(old)  # written as before
    kd = CompressionPlan(plan.layers, distill=DistillConfig(steps=50, lr=5e-5))
    data = json.loads(kd.to_json())
    assert data["autocompress_plan"] == PLAN_VERSION == 1 and data["distill"]["steps"] == 50
    assert CompressionPlan.from_json(kd.to_json()) == kd and kd != plan
    assert kd.summary().endswith("; distill 50 steps lr 5e-05")
    assert CompressionPlan(plan.layers, distill=DistillConfig(steps=0)) == plan
    with pytest.raises(UserError, match="distill: unknown field"):
        CompressionPlan.from_json('{"layers": {}, "distill": {"stepz": 3}}')
