"""The plan-level drop_blocks entry: JSON round trip, equality, MLflow params, summary, and the refusals
(an index out of range, a duplicate, every block, a non-list, hidden-state distillation) as one-line UserErrors."""

from __future__ import annotations

import pytest

from autocompress.depth.plan import flatten, kept_blocks, normalize_drop_blocks, summary
from autocompress.distill_spec import DistillConfig
from autocompress.errors import UserError
from autocompress.kvcache.plan import KVCachePlan
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.validation import validate_plan


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama").info  # 2 blocks


def test_json_round_trip_sorted_and_only_when_set():
    plan = CompressionPlan({"model.layers.1.mlp.up_proj": LayerPlan(bits=4)}, drop_blocks=[5, 2],
                           kv_cache=KVCachePlan(bits=8))
    assert plan.drop_blocks == (2, 5) and plan.to_dict()["drop_blocks"] == [2, 5]
    back = CompressionPlan.from_json(plan.to_json())
    assert back == plan and hash(back) == hash(plan)
    assert back != CompressionPlan(plan.layers, kv_cache=plan.kv_cache)
    assert "drop_blocks" not in CompressionPlan({}).to_dict()
    assert CompressionPlan({}, drop_blocks=[1]).is_empty is False


def test_params_and_summaries():
    assert flatten((2, 5)) == {"drop_blocks": "2,5", "drop_blocks.count": 2} and flatten(()) == {}
    plan = CompressionPlan({"x.0.y": LayerPlan(bits=4)}, drop_blocks=[3])
    assert plan.flatten()["drop_blocks"] == "3" and plan.flatten()["x.0.y.bits"] == 4
    assert plan.summary() == "bits 4x1; drop 1 block (3)"
    assert CompressionPlan({}, drop_blocks=[1, 2]).summary() == "drop 2 blocks (1, 2)"
    assert "drop 2 blocks (1, 2)" in str(CompressionPlan({}, drop_blocks=[1, 2]))
    assert str(plan).splitlines()[-1] == "drop 1 block (3)"
    assert summary((0,)) == "drop 1 block (0)" and kept_blocks((1, 3), 5) == [0, 2, 4]


@pytest.mark.parametrize("value, message", [
    ([1, 1], r"^plan: drop_blocks names block 1 twice; list each block once$"),
    ([-1], r"drop_blocks holds -1; each entry must be a block index"),
    (["2"], r"drop_blocks holds '2'"),
    ("2", r"drop_blocks='2' must be a list of block indices"),
])
def test_malformed_entries_are_refused_when_read(value, message):
    with pytest.raises(UserError, match=message):
        CompressionPlan.from_dict({"layers": {}, "drop_blocks": value}, where="plan")
    with pytest.raises(UserError, match=message.replace("^plan: ", "")):
        normalize_drop_blocks(value)


def test_validation_against_the_model(llama):
    validate_plan(CompressionPlan({}, drop_blocks=[1]), llama)
    with pytest.raises(UserError, match=r"^drop_blocks: block 2 is out of range; this model has 2 blocks \(0\.\.1\)$"):
        validate_plan(CompressionPlan({}, drop_blocks=[2]), llama)
    with pytest.raises(UserError, match=r"^drop_blocks: all 2 blocks are dropped; keep at least one"):
        validate_plan(CompressionPlan({}, drop_blocks=[0, 1]), llama)
    distill = DistillConfig(steps=10, beta=1.0)
    with pytest.raises(UserError, match=r"drop_blocks with distill.beta=1: .*set distill.beta: 0"):
        validate_plan(CompressionPlan({}, drop_blocks=[0], distill=distill), llama)
    validate_plan(CompressionPlan({}, drop_blocks=[0], distill=DistillConfig(steps=10, beta=0.0)), llama)


def test_the_cli_exits_2_with_one_line(tmp_path, capsys):
    from autocompress.cli import main

    plan = tmp_path / "plan.json"
    plan.write_text('{"layers": {}, "drop_blocks": [0, 7]}')
    assert main(["apply", "random:llama", str(plan)]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1 and "drop_blocks: block 7 is out of range" in err[0]
