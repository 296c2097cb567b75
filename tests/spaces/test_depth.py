"""space.depth: how many blocks to drop in Block Influence order (one param) or one switch per block; the drops
land in the plan (and its MLflow params), baselines drop nothing, params reproduce plans, and the refusals."""

from __future__ import annotations

import optuna
import pytest
from pydantic import ValidationError

from autocompress.config import SpaceSection
from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.spaces import ConfigSpace
from autocompress.validation import validate_plan
from tests.support import sample_plans

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama").info  # 2 blocks


def _sample(cs, n=30, seed=0):
    return sample_plans(cs, n, seed)


def test_influence_mode_drops_the_first_k_of_the_order(llama):
    cs = ConfigSpace(SpaceSection.model_validate({"quantize": {"bits": [4, None]},
                                                  "depth": {"max_drop": 1, "order": [1, 0]}}), llama)
    seen = set()
    for params, plan in _sample(cs):
        k = params["depth.drop"]
        seen.add(k)
        assert plan.drop_blocks == ((1,) if k else ())
        assert not any(n.startswith("model.layers.1.") for n in plan.layers) or not k  # dropped block: no entries
        assert cs.plan_from_params(params) == plan
        assert plan.flatten().get("drop_blocks") == ("1" if k else None)
        validate_plan(plan, llama)
    assert seen == {0, 1}


def test_switches_one_boolean_per_block_capped_by_max_drop(llama):
    cs = ConfigSpace(SpaceSection.model_validate({"depth": {"mode": "switches", "max_drop": 1}}), llama)
    for params, plan in _sample(cs):
        drawn = [i for i in (0, 1) if params[f"depth.block{i}.drop"]]
        assert plan.drop_blocks == tuple(drawn[:1])
        assert cs.plan_from_params(params) == plan


def test_baselines_drop_nothing(llama):
    cs = ConfigSpace(SpaceSection.model_validate({"quantize": {"bits": [4, None]},
                                                  "depth": {"max_drop": 1, "order": [0, 1]}}), llama)
    plans, params = cs.uniform_plans(), cs.uniform_params()
    assert set(plans) == {"quantize bits=4"} and plans["quantize bits=4"].drop_blocks == ()
    assert params["quantize bits=4"]["depth.drop"] == 0
    assert cs.plan_from_params(params["quantize bits=4"]) == plans["quantize bits=4"]


def test_refusals(llama):
    with pytest.raises(UserError, match=r"space.depth.max_drop=2 leaves no block of this model's 2; use at most 1"):
        ConfigSpace(SpaceSection.model_validate({"depth": {"max_drop": 2, "order": [0, 1]}}), llama)
    with pytest.raises(UserError, match=r"space.depth.order must list each of the model's 2 blocks"):
        ConfigSpace(SpaceSection.model_validate({"depth": {"max_drop": 1, "order": [0, 5]}}), llama)
    with pytest.raises(UserError, match=r"space.distill.beta: 0"):
        ConfigSpace(SpaceSection.model_validate({"depth": {"max_drop": 1, "order": [0, 1]},
                                                 "distill": {"steps": [0, 10], "beta": 1.0, "alpha": 1.0}}), llama)
    with pytest.raises(ValidationError, match="max_drop"):
        SpaceSection.model_validate({"depth": {"max_drop": 0}})
    with pytest.raises(ValidationError, match="distinct block indices"):
        SpaceSection.model_validate({"depth": {"order": [1, 1]}})
    unresolved = ConfigSpace(SpaceSection.model_validate({"depth": {"max_drop": 1}}), llama)  # no order yet
    with pytest.raises(UserError, match="space.depth.order is not known yet"):
        unresolved.plan_from_params({"depth.drop": 1})
    assert unresolved.plan_from_params({"depth.drop": 0}).drop_blocks == ()
