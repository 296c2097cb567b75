"""KVCachePlan: validation in one line, JSON exactness inside CompressionPlan, old plans unchanged, and the
check against a model's inventory (no cache on an encoder, blocks and groups that fit)."""

from __future__ import annotations

import json

import pytest

from autocompress.errors import UserError
from autocompress.kvcache.plan import KVCachePlan, check_kv_cache
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.validation import validate_plan


def test_round_trip_inside_a_plan_is_exact():
    plan = CompressionPlan({"a": LayerPlan(bits=4)},
                           kv_cache=KVCachePlan(bits=4, group_size=None, symmetric=True, layers={0: 8, "5": 16}))
    data = json.loads(plan.to_json())
    assert data["kv_cache"] == {"bits": 4, "group_size": None, "symmetric": True, "layers": {"0": 8, "5": 16}}
    again = CompressionPlan.from_json(plan.to_json())
    assert again == plan and hash(again) == hash(plan) and again.to_json() == plan.to_json()
    assert again.kv_cache.bits_for(0) == 8 and again.kv_cache.bits_for(5) == 16 and again.kv_cache.bits_for(3) == 4
    assert plan != CompressionPlan({"a": LayerPlan(bits=4)})


def test_a_cache_at_16_bits_is_no_plan_and_old_json_reads_as_before():
    assert CompressionPlan({}, kv_cache=KVCachePlan()).kv_cache is None
    assert CompressionPlan({}, kv_cache=KVCachePlan(bits=16, layers={2: 16})).is_empty
    old = '{"autocompress_plan": 1, "layers": {"x": {"bits": 8}}}'
    plan = CompressionPlan.from_json(old)
    assert plan.kv_cache is None and "kv_cache" not in plan.to_dict()
    # overrides that repeat the global bits are dropped, so equal caches compare equal
    assert KVCachePlan(bits=8, layers={1: 8}) == KVCachePlan(bits=8)
    kv_only = CompressionPlan({}, kv_cache=KVCachePlan(bits=8))
    assert not kv_only.is_empty and "kv 8" in str(kv_only) and kv_only.summary() == "kv 8"


def test_flatten_and_summary():
    plan = CompressionPlan({"a": LayerPlan(bits=4)}, kv_cache=KVCachePlan(bits=4, layers={0: 8, 29: 8}))
    flat = plan.flatten()
    assert flat["kv_cache.bits"] == 4 and flat["kv_cache.layers.0"] == 8 and flat["kv_cache.group_size"] == 32
    assert plan.summary() == "bits 4x1; kv 4 (8 on 2 blocks)"


@pytest.mark.parametrize("text, field", [
    ('{"bits": 3}', "kv_cache.bits=3"),
    ('{"bits": 8, "layers": {"2": 5}}', "kv_cache.layers.2=5"),
    ('{"layers": {"x": 8}}', "kv_cache.layers: block 'x'"),
    ('{"layers": [8]}', "kv_cache.layers must map"),
    ('{"group_size": 0}', "kv_cache.group_size=0"),
    ('{"symmetric": "yes"}', "kv_cache.symmetric"),
    ('{"bitz": 8}', "kv_cache has no field 'bitz'"),
    ('8', "kv_cache must be an object"),
])
def test_bad_entries_are_one_line_user_errors(text, field):
    with pytest.raises(UserError) as err:
        CompressionPlan.from_json(f'{{"layers": {{}}, "kv_cache": {text}}}', where="p.json")
    message = str(err.value)
    assert "\n" not in message and message.startswith("p.json: ") and field in message


def test_check_against_the_model():
    llama = load_model("random:llama").info  # 2 blocks, head_dim 16
    check_kv_cache(KVCachePlan(bits=4), llama)  # group 32 >= head_dim: one scale per head
    check_kv_cache(KVCachePlan(bits=4, group_size=8, layers={1: 8}), llama)
    with pytest.raises(UserError, match=r"kv_cache.layers: block 2 is out of range; this model has 2 blocks"):
        validate_plan(CompressionPlan({}, kv_cache=KVCachePlan(bits=4, layers={2: 8})), llama)
    with pytest.raises(UserError, match=r"kv_cache.group_size=6 does not divide the head dimension 16"):
        validate_plan(CompressionPlan({}, kv_cache=KVCachePlan(bits=4, group_size=6)), llama)
    bert = load_model("random:bert").info
    with pytest.raises(UserError, match=r"kv_cache: this bert model keeps no KV cache.*drop kv_cache"):
        validate_plan(CompressionPlan({}, kv_cache=KVCachePlan(bits=8)), bert)
