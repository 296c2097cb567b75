"""space.kv_cache: global and per-block draws into the plan's KVCachePlan, constants that draw nothing, uniform
baselines that reproduce from their params, and the refusals (an encoder, a group that does not fit, bits 3)."""

from __future__ import annotations

import optuna
import pytest
from pydantic import ValidationError

from autocompress.config import SpaceSection
from autocompress.errors import UserError
from autocompress.kvcache.plan import KVCachePlan
from autocompress.loading import load_model
from autocompress.spaces import ConfigSpace
from autocompress.validation import validate_plan
from tests.support import sample_plans

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama").info  # 2 blocks, head_dim 16


def _sample(cs, n=40, seed=0):
    return sample_plans(cs, n, seed)


def test_global_bits_are_one_param_and_16_leaves_the_cache_alone(llama):
    cs = ConfigSpace(SpaceSection.model_validate({"kv_cache": {"bits": [8, 16, 4]}}), llama)
    seen = set()
    for params, plan in _sample(cs):
        assert set(params) == {"kv_cache.bits"}  # group_size and symmetric are constants
        bits = params["kv_cache.bits"]
        seen.add(bits)
        assert plan.kv_cache == (None if bits == 16 else KVCachePlan(bits=bits))
        assert cs.plan_from_params(params) == plan
        validate_plan(plan, llama)
    assert seen == {16, 8, 4}


def test_per_block_draws_and_their_conditional_fields(llama):
    cs = ConfigSpace(SpaceSection.model_validate({"kv_cache": {
        "bits": [16, 4, 2], "per_block": True, "group_size": [8, None], "symmetric": [True, False]}}), llama)
    mixed = 0
    for params, plan in _sample(cs, n=60):
        drawn = [params["kv_cache.block0.bits"], params["kv_cache.block1.bits"]]
        quantized = any(b != 16 for b in drawn)
        assert ("kv_cache.group_size" in params) == quantized == ("kv_cache.symmetric" in params)
        if not quantized:
            assert plan.kv_cache is None
            continue
        kv = plan.kv_cache
        assert [kv.bits_for(0), kv.bits_for(1)] == drawn
        assert kv.group_size == params["kv_cache.group_size"] and kv.symmetric == params["kv_cache.symmetric"]
        mixed += drawn[0] != drawn[1]
        assert cs.plan_from_params(params) == plan
    assert mixed > 0


def test_uniform_baselines_reproduce_and_leave_the_cache_alone_elsewhere(llama):
    cs = ConfigSpace(SpaceSection.model_validate({"quantize": {"bits": [4, None]},
                                                  "kv_cache": {"bits": [4, 16, 8], "per_block": True}}), llama)
    plans, params = cs.uniform_plans(), cs.uniform_params()
    assert set(plans) == set(params) == {"quantize bits=4", "kv_cache bits=8", "kv_cache bits=4"}
    assert plans["kv_cache bits=8"].kv_cache == KVCachePlan(bits=8) and not plans["kv_cache bits=8"].layers
    assert plans["quantize bits=4"].kv_cache is None
    for label, p in params.items():
        assert cs.plan_from_params(p) == plans[label]
    assert "kv_cache" not in " ".join(cs.main_choices())  # sensitivity measures layers only


def test_refusals(llama):
    bert = load_model("random:bert").info
    with pytest.raises(UserError, match=r"space.kv_cache: this bert model keeps no KV cache"):
        ConfigSpace(SpaceSection.model_validate({"kv_cache": {"bits": [8]}}), bert)
    with pytest.raises(UserError, match=r"space.kv_cache.group_size=6 does not divide the head dimension 16"):
        ConfigSpace(SpaceSection.model_validate({"kv_cache": {"group_size": [6]}}), llama)
    with pytest.raises(ValidationError, match="kv_cache.bits"):
        SpaceSection.model_validate({"kv_cache": {"bits": [3]}})
    with pytest.raises(ValidationError, match="group_size must be a positive integer"):
        SpaceSection.model_validate({"kv_cache": {"group_size": [0]}})
