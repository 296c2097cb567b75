"""Block Influence: 1 - cos(block input, block output) per block over the non-padding tokens, read by hooks on
the blocks (Llama, GPT-2, BERT); a block made an identity scores 0 and comes first in the drop order."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.depth.influence import block_influence, influence_order
from autocompress.loading import load_model


def _batches():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 60, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return [{"input_ids": ids, "attention_mask": mask}]


@pytest.mark.parametrize("spec", ["random:llama", "random:gpt2", "random:bert"])
def test_scores_per_block_from_hidden_states(spec):
    lm = load_model(spec)
    model = copy.deepcopy(lm.model).eval()
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    scores = block_influence(model, _batches(), lm.info.block_prefix)
    assert len(scores) == 2 and all(0.0 <= s <= 2.0 for s in scores) and any(s > 0 for s in scores)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks  # its hooks are gone
    if lm.task == "causal-lm":  # against the model's own hidden states: input of block i = hidden_states[i]
        with torch.no_grad():
            b = _batches()[0]
            hs = model(**b, output_hidden_states=True).hidden_states
        cos = torch.nn.functional.cosine_similarity(hs[0].float(), hs[1].float(), dim=-1)
        assert scores[0] == pytest.approx(1 - float(cos[b["attention_mask"].bool()].mean()), abs=1e-5)


def test_an_identity_block_scores_zero_and_is_dropped_first():
    lm = load_model("random:llama")
    model = copy.deepcopy(lm.model).eval()
    with torch.no_grad():
        for p in model.model.layers[1].mlp.down_proj.parameters():
            p.zero_()
        for p in model.model.layers[1].self_attn.o_proj.parameters():
            p.zero_()
    scores = block_influence(model, _batches(), "model.layers")
    assert scores[1] == pytest.approx(0.0, abs=1e-6) and scores[0] > 0.01
    assert influence_order(scores) == [1, 0] and influence_order([0.5, 0.5, 0.1]) == [2, 0, 1]
