"""Dropping blocks of the real models: SmolLM2-135M (Llama, 30 blocks) still generates with its cache on the 28
blocks left, and MiniLM (BERT, 6 blocks) still embeds; each reduced model is exactly the model of its config."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.evaluators.size import plan_size
from autocompress.plan import CompressionPlan
from autocompress.policies import apply_plan


@pytest.mark.slow
def test_smollm2_generates_without_two_blocks(smollm2):
    lm = smollm2
    plan = CompressionPlan({}, drop_blocks=[20, 25])
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    assert model.config.num_hidden_layers == 28 and len(model.model.layers) == 28
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(28))
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=4)
    assert out.shape[1] == ids.shape[1] + 4
    params = sum(p.numel() for p in model.parameters())  # tied head counted once
    assert plan_size(plan, lm.info).total_bytes == params * lm.info.dtype_bytes


@pytest.mark.slow
def test_minilm_embeds_without_a_block(minilm):
    lm = minilm
    model = apply_plan(copy.deepcopy(lm.model), CompressionPlan({}, drop_blocks=[3]), info=lm.info)
    assert model.config.num_hidden_layers == 5 and len(model.encoder.layer) == 5
    batch = lm.tokenizer(["a sentence to embed", "another one"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch).last_hidden_state
        full = lm.model(**batch).last_hidden_state
    assert out.shape == full.shape and not torch.allclose(out, full)
    fresh = type(lm.model)(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(**batch).last_hidden_state, out)
