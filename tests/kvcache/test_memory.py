"""The quantized cache counted: memory_mb at its bits plus scales (per block), and decode latency reading it."""

from __future__ import annotations

import math

import pytest

from autocompress.evaluators.latency._base import Workload, plan_ops
from autocompress.evaluators.latency.roofline import RooflineLatency
from autocompress.evaluators.size import kv_cache_values, plan_memory, plan_size
from autocompress.hardware import load_profile
from autocompress.kvcache.memory import bits_per_value, cache_bytes
from autocompress.kvcache.plan import KVCachePlan
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan


@pytest.fixture(scope="module")
def info():
    return load_model("random:llama").info  # 2 blocks, 4 kv heads of 16 channels


def _kv(**fields) -> CompressionPlan:
    return CompressionPlan({}, kv_cache=KVCachePlan(**fields))


def test_bits_per_value_include_the_scales():
    assert bits_per_value(None, 0, 64) is None and bits_per_value(KVCachePlan(), 0, 64) is None
    assert bits_per_value(KVCachePlan(bits=8), 0, 64) == 9.0  # fp16 scale + fp16 minimum per 32 channels
    assert bits_per_value(KVCachePlan(bits=4, symmetric=True), 0, 64) == 4.5
    assert bits_per_value(KVCachePlan(bits=2, group_size=None), 0, 64) == 2.5
    assert bits_per_value(KVCachePlan(bits=4, layers={1: 16}), 1, 64) is None
    assert cache_bytes(KVCachePlan(bits=2), {0: 3, 1: 3}, 64, 1, 10, 4) == 2 * math.ceil(2 * 3 * 64 * 10 * 3 / 8)


def test_memory_counts_the_cache_at_its_bits_per_block(info):
    batch, seq = 4, 256
    values = kv_cache_values(CompressionPlan({}), info, batch, seq)
    weights = plan_size(CompressionPlan({}), info).total_bytes
    full = plan_memory(CompressionPlan({}), info, batch, seq, "fp32")
    assert full.kv_cache_bytes == values * 4 and full.weights_bytes == weights
    assert plan_memory(_kv(bits=16), info, batch, seq, "fp32") == full
    per_block = values // 2
    eight = plan_memory(_kv(bits=8), info, batch, seq, "fp32")  # head_dim 16: one group per head, 8 + 32/16 bits
    assert eight.kv_cache_bytes == 2 * per_block * 10 // 8 and eight.weights_bytes == weights
    mixed = plan_memory(_kv(bits=2, layers={0: 16}), info, batch, seq, "fp16")
    assert mixed.kv_cache_bytes == per_block * 2 + per_block * 4 // 8
    sizes = [plan_memory(_kv(bits=b), info, batch, seq, "fp16").memory_mb for b in (16, 8, 4, 2)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


def test_decode_reads_the_cache_at_its_bits(info):
    profile = load_profile("cpu-local")
    decode, prefill = Workload(batch=8, seq_len=4096, mode="decode"), Workload(batch=1, seq_len=64)
    reads = [op for op in plan_ops(CompressionPlan({}), info, decode) if op.kind == "kv_cache"]
    assert [(op.layer, op.elements, op.kernels) for op in reads] == [
        (f"model.layers.{b}.kv_cache", 2.0 * 8 * 4 * 4096 * 16, 0) for b in (0, 1)]
    assert all(op.cache_bits is None for op in reads)
    quantized = [op for op in plan_ops(_kv(bits=4, layers={1: 8}), info, decode) if op.kind == "kv_cache"]
    assert [op.cache_bits for op in quantized] == [6.0, 10.0]
    assert not [op for op in plan_ops(_kv(bits=4), info, prefill) if op.kind == "kv_cache"]
    model = RooflineLatency(profile)
    full = next(o for o in model.predict(CompressionPlan({}), info, decode).ops if o.op.kind == "kv_cache")
    assert full.ms == pytest.approx(reads[0].elements * 4 / (profile.bandwidth_gbs * 1e9
                                                             * profile.efficiency.memory) * 1e3)  # unscaled
    ms = [model.predict(p, info, decode).total_ms for p in (CompressionPlan({}), _kv(bits=8), _kv(bits=2))]
    assert ms[0] > ms[1] > ms[2]
    assert model.predict(_kv(bits=2), info, prefill).total_ms == model.predict(CompressionPlan({}), info,
                                                                               prefill).total_ms
