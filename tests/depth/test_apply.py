"""Blocks physically removed: the module list rebuilt, the config's block count and per-layer lists updated,
attention layer_idx renumbered; the reduced model computes exactly what a model built from its config with its
weights computes (Llama, GPT-2, BERT), generates with a (quantized) KV cache, and a workspace restore brings the
full model back."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.depth.apply import reduced_config, remove_blocks
from autocompress.errors import UserError
from autocompress.kvcache.plan import KVCachePlan
from autocompress.kvcache.runtime import cache_kwargs, kv_plan_of
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from autocompress.search.workers.workspace import ModelWorkspace

IDS = torch.tensor([[3, 17, 9, 41, 5, 22, 8, 30]])


def _forward(model, ids=IDS):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("spec", ["random:llama", "random:gpt2", "random:bert"])
def test_the_reduced_model_is_the_model_of_its_config(spec):
    lm = load_model(spec)
    model = remove_blocks(copy.deepcopy(lm.model), (0,), lm.info)
    assert len(model.get_submodule(lm.info.block_prefix)) == 1
    assert model.config.num_hidden_layers == 1 and lm.model.config.num_hidden_layers == 2  # the original untouched
    assert all(m.config is model.config for m in model.modules() if "config" in vars(m))
    assert all(m.layer_idx == 0 for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int))
    fresh = type(lm.model)(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(_forward(model.eval()), _forward(fresh))
    assert not torch.equal(_forward(model), _forward(lm.model.eval()))


def test_per_layer_config_lists_keep_the_kept_blocks():
    lm = load_model("random:llama")
    config = copy.deepcopy(lm.model.config)
    config.layer_types = ["sliding_attention", "full_attention"]
    new = reduced_config(config, (0,), 2)
    assert new.layer_types == ["full_attention"] and new.num_hidden_layers == 1
    assert config.layer_types == ["sliding_attention", "full_attention"]


def test_a_decoder_generates_with_its_kv_cache_on_the_blocks_left():
    lm = load_model("random:llama")
    plan = CompressionPlan({"model.layers.1.mlp.up_proj": LayerPlan(bits=8, group_size=None)},
                           kv_cache=KVCachePlan(bits=4, layers={1: 8}), drop_blocks=[0])
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    assert kv_plan_of(model) == KVCachePlan(bits=8)  # block 1's bits, now block 0
    assert model.model.layers[0].mlp.up_proj.weight is not lm.model.model.layers[1].mlp.up_proj.weight
    kwargs = cache_kwargs(model)
    assert len(kwargs["cache"].layers) == 1
    out = model.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), do_sample=False, max_new_tokens=5,
                         **kwargs)
    assert out.shape == (1, IDS.shape[1] + 5)
    plain = copy.deepcopy(model)
    vars(plain).pop("_autocompress_kv_cache")
    gen = plain.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), do_sample=False, max_new_tokens=5)
    assert gen.shape == out.shape  # the ordinary DynamicCache has one layer per block left too


def test_gpt2_generates_after_dropping():
    lm = load_model("random:gpt2")
    model = apply_plan(copy.deepcopy(lm.model), CompressionPlan({}, drop_blocks=[1]), info=lm.info)
    out = model.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), do_sample=False, max_new_tokens=3)
    assert out.shape == (1, IDS.shape[1] + 3) and model.config.n_layer == 1


def test_a_workspace_restore_brings_the_blocks_back():
    lm = load_model("random:llama")
    ws = ModelWorkspace(lm.model)
    model = apply_plan(ws.checkout(), CompressionPlan({}, drop_blocks=[1]), info=lm.info)
    assert len(model.model.layers) == 1
    ws.restore()
    assert ws.matches_base() and len(ws.model.model.layers) == 2 and ws.model.config.num_hidden_layers == 2
    assert torch.equal(_forward(ws.model.eval()), _forward(lm.model.eval()))


def test_refused_before_anything_changes():
    lm = load_model("random:bert")
    model = copy.deepcopy(lm.model)
    with pytest.raises(UserError, match="drop_blocks: all 2 blocks are dropped"):
        remove_blocks(model, (0, 1), lm.info)
    assert len(model.encoder.layer) == 2
