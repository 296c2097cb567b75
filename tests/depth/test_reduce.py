"""The reduced view: dropped blocks counted nowhere (size, memory, latency), the rest renumbered with their plan
entries and KV-cache bits, and plan_size equal to the byte to plan_size of the smaller model's own plan."""

from __future__ import annotations

import copy

import pytest

from autocompress.depth.reduce import reduced, reduced_info, reduced_plan, renamer
from autocompress.evaluators.latency._base import Workload, plan_ops
from autocompress.evaluators.size import plan_memory, plan_size
from autocompress.kvcache.plan import KVCachePlan
from autocompress.loading import load_model
from autocompress.models import inspect_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.depth.apply import remove_blocks


@pytest.fixture(scope="module", params=["random:llama", "random:gpt2", "random:bert"])
def loaded(request):
    return load_model(request.param)


def test_renamer():
    rename = renamer("model.layers", (1, 3), 5)
    assert rename("model.layers.0.mlp") == "model.layers.0.mlp" and rename("model.layers.1.mlp") is None
    assert rename("model.layers.4.self_attn.q_proj") == "model.layers.2.self_attn.q_proj"
    assert rename("model.layers.2") == "model.layers.1" and rename("lm_head") == "lm_head"
    assert rename("model.layers_norm.3") == "model.layers_norm.3"


def test_the_reduced_inventory_is_the_inventory_of_the_reduced_model(loaded):
    info = loaded.info
    small = remove_blocks(copy.deepcopy(loaded.model), (0,), info)
    actual, view = inspect_model(small, info.task), reduced_info(info, (0,))
    assert view.layers == actual.layers and view.structures == actual.structures and view.groups == actual.groups
    assert view.total_params == actual.total_params and view.extra == actual.extra
    assert reduced_info(info, ()) is info


def test_plan_entries_of_dropped_blocks_are_ignored_and_the_rest_renumbered(loaded):
    info = loaded.info
    b0 = [n for n in info.targets_by_default() if info.layers[n].block == 0]
    b1 = [n for n in info.targets_by_default() if info.layers[n].block == 1]
    plan = CompressionPlan({b0[0]: LayerPlan(bits=2), b1[0]: LayerPlan(bits=4, group_size=None)}, drop_blocks=[0])
    small = reduced_plan(plan, info)
    assert small == CompressionPlan({b1[0].replace(".1.", ".0.", 1): LayerPlan(bits=4, group_size=None)})
    small_info = reduced_info(info, (0,))
    assert plan_size(plan, info).total_bytes == plan_size(small, small_info).total_bytes
    assert plan_size(plan, info).original_bytes == info.total_params * info.dtype_bytes  # the ratio is to the original
    assert plan_size(plan, info).total_bytes == plan_size(CompressionPlan({b1[0]: LayerPlan(bits=4, group_size=None)},
                                                                          drop_blocks=[0]), info).total_bytes
    full = plan_size(CompressionPlan({}), info).total_bytes
    assert full - plan_size(CompressionPlan({}, drop_blocks=[1]), info).total_bytes \
        == info.extra["block_params"][1] * info.dtype_bytes
    assert reduced(CompressionPlan({}), info) == (CompressionPlan({}), info)


def test_kv_cache_bits_move_with_their_blocks():
    info = load_model("random:llama").info
    plan = CompressionPlan({}, kv_cache=KVCachePlan(bits=4, layers={0: 8}), drop_blocks=[1])
    assert reduced_plan(plan, info).kv_cache == KVCachePlan(bits=8)
    plan = CompressionPlan({}, kv_cache=KVCachePlan(bits=4, layers={0: 8}), drop_blocks=[0])
    assert reduced_plan(plan, info).kv_cache == KVCachePlan(bits=4)


def test_memory_and_latency_count_the_remaining_blocks():
    info = load_model("random:llama").info
    full = plan_memory(CompressionPlan({}), info, 2, 64, "fp32")
    half = plan_memory(CompressionPlan({}, drop_blocks=[0]), info, 2, 64, "fp32")
    assert half.kv_cache_bytes * 2 == full.kv_cache_bytes and half.weights_bytes < full.weights_bytes
    work = Workload(batch=1, seq_len=32, mode="decode")
    ops_full = plan_ops(CompressionPlan({}), info, work)
    ops = plan_ops(CompressionPlan({"model.layers.1.mlp.up_proj": LayerPlan(bits=4)}, drop_blocks=[0]), info, work)
    assert not any(op.layer.startswith("model.layers.1.") for op in ops)
    assert sum(op.kind == "attention" for op in ops) * 2 == sum(op.kind == "attention" for op in ops_full)
    assert [op.fmt for op in ops if op.layer == "model.layers.0.mlp.up_proj"] != ["dense"]


def test_the_measured_latency_model_times_the_smaller_model():
    from autocompress.evaluators.latency.kernels import build_real_model

    lm = load_model("random:llama")
    plan = CompressionPlan({"model.layers.1.mlp": LayerPlan(sparsity=0.5, pattern="structured")}, drop_blocks=[0])
    model = build_real_model(lm.model, plan, "cpu")
    assert len(model.model.layers) == 1 and model.config.num_hidden_layers == 1
    assert model.model.layers[0].mlp.up_proj.out_features == lm.model.model.layers[1].mlp.up_proj.out_features // 2
    assert len(lm.model.model.layers) == 2
