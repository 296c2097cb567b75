"""QuantizedKVCache and fake_quantize_kv: the grid itself, keys stored on it after RoPE, 16 bits bit-identical,
per-block bits, and the runtime path (apply_plan attaches the cache, the workspace drops it, the evaluators and
generation run with it)."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.data import load_texts
from autocompress.evaluators import build_evaluator
from autocompress.evaluators.generation import generate_samples
from autocompress.kvcache.cache import QuantizedKVCache, fake_quantize_kv
from autocompress.kvcache.plan import KVCachePlan
from autocompress.kvcache.runtime import cache_kwargs, kv_plan_of
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan
from autocompress.policies import apply_plan
from autocompress.search.workers.workspace import ModelWorkspace


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama")


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("symmetric", [False, True])
def test_fake_quantize_kv_puts_each_group_on_its_grid(bits, symmetric):
    x = torch.randn(2, 3, 5, 64, generator=torch.Generator().manual_seed(1)) * 3 + 1
    y = fake_quantize_kv(x, bits, 32, symmetric)
    assert y.shape == x.shape and y.dtype == x.dtype
    groups, orig = y.reshape(-1, 32), x.reshape(-1, 32)
    levels = 2 ** bits - (1 if symmetric else 0)
    assert max(len(torch.unique(g)) for g in groups) <= levels
    for g, o in zip(groups[:20], orig[:20]):
        if symmetric:
            scale = torch.tensor(float(o.abs().max()) / (2 ** (bits - 1) - 1)).half().float()
            assert torch.allclose(g / scale, (g / scale).round(), atol=1e-3)
        else:
            low = torch.tensor(float(o.min())).half().float()
            scale = torch.tensor(float(o.max() - low) / (2 ** bits - 1)).half().float()
            q = (g - low) / scale
            assert torch.allclose(q, q.round(), atol=1e-3) and q.min() > -0.01 and q.max() < 2 ** bits - 0.99
    err = (y - x).abs().max() / x.abs().max()
    assert err < {8: 0.01, 4: 0.15, 2: 0.8}[bits]


def test_fake_quantize_kv_leaves_16_bits_and_zero_groups_alone():
    x = torch.randn(1, 1, 3, 16)
    assert fake_quantize_kv(x, 16, 16, False) is x
    zeros = torch.zeros(1, 1, 2, 16)
    assert torch.equal(fake_quantize_kv(zeros, 2, 8, False), zeros)
    assert torch.equal(fake_quantize_kv(zeros, 4, 8, True), zeros)


def test_16_bits_is_bit_identical_and_fewer_bits_drift_more(llama):
    model, batch = llama.model.eval(), _batch()
    with torch.no_grad():
        ref = model(**batch).logits
        same = model(**batch, cache=QuantizedKVCache(model.config, KVCachePlan(bits=16, layers={0: 16})),
                     use_cache=True).logits
        assert torch.equal(ref, same)
        drift = [(model(**batch, cache=QuantizedKVCache(model.config, KVCachePlan(bits=b)), use_cache=True).logits
                  - ref).abs().max().item() for b in (8, 4, 2)]
    assert 0 < drift[0] < drift[1] < drift[2]


def test_keys_are_stored_on_the_grid_after_rope_and_per_block_bits_hold(llama):
    model, batch = llama.model.eval(), _batch()
    cache = QuantizedKVCache(model.config, KVCachePlan(bits=16, group_size=8, layers={1: 2}))
    with torch.no_grad():
        model(**batch, cache=cache, use_cache=True)
        full = QuantizedKVCache(model.config, KVCachePlan())  # what the blocks store unquantized
        model(**batch, cache=full, use_cache=True)
    assert torch.equal(cache.layers[0].keys, full.layers[0].keys)  # block 0 at 16 bits
    keys, values = cache.layers[1].keys, cache.layers[1].values
    # the stored (post-RoPE) keys of block 1 are what the grid makes of the full-precision post-RoPE keys
    assert torch.equal(keys, fake_quantize_kv(full.layers[1].keys, 2, 8, False))
    assert max(len(torch.unique(g)) for g in keys.reshape(-1, 8)) <= 4
    assert max(len(torch.unique(g)) for g in values.reshape(-1, 8)) <= 4


def test_apply_plan_attaches_the_cache_and_the_workspace_drops_it(llama):
    workspace = ModelWorkspace(llama.model)
    model = workspace.checkout()
    assert cache_kwargs(model) == {}
    apply_plan(model, CompressionPlan({}, kv_cache=KVCachePlan(bits=4)), info=llama.info)
    assert kv_plan_of(model) == KVCachePlan(bits=4)
    kwargs = cache_kwargs(model)
    assert isinstance(kwargs["cache"], QuantizedKVCache) and kwargs["use_cache"] is True
    assert kwargs["cache"] is not cache_kwargs(model)["cache"]  # a fresh cache per call
    workspace.restore()
    assert kv_plan_of(model) is None and workspace.matches_base()


@pytest.mark.parametrize("name", ["next_token", "perplexity"])
def test_evaluators_run_with_the_quantized_cache(llama, name):
    texts = load_texts(n=6, seed=0)
    evaluator = build_evaluator(name, llama.model, llama.tokenizer, texts, batch_size=3, max_length=32)
    metric = "kl" if name == "next_token" else "perplexity"
    base = evaluator.evaluate(llama.model)[metric]
    model = copy.deepcopy(llama.model)
    apply_plan(model, CompressionPlan({}, kv_cache=KVCachePlan(bits=16)), info=llama.info)
    assert evaluator.evaluate(model)[metric] == base  # 16 bits: nothing attached, bit-identical
    apply_plan(model, CompressionPlan({}, kv_cache=KVCachePlan(bits=2)), info=llama.info)
    assert evaluator.evaluate(model)[metric] != base
    if name == "next_token":
        assert base == 0.0 and evaluator.evaluate(model)["kl"] > 0


def test_generation_decodes_through_the_quantized_cache(llama, monkeypatch):
    model = copy.deepcopy(llama.model)
    apply_plan(model, CompressionPlan({}, kv_cache=KVCachePlan(bits=2)), info=llama.info)
    written = []
    original = QuantizedKVCache.update

    def spy(self, key_states, value_states, layer_idx, *args, **kwargs):
        written.append(key_states.shape[-2])
        return original(self, key_states, value_states, layer_idx, *args, **kwargs)

    monkeypatch.setattr(QuantizedKVCache, "update", spy)
    out = generate_samples(model, llama.tokenizer, ["hello world"], max_new_tokens=4)
    assert len(out) == 1
    blocks = llama.info.extra["num_blocks"]
    assert len(written) >= 2 * blocks and written[-1] == 1  # the prompt, then one token per decode step
