"""Every plan-level entry in one plan (dropped blocks, a pruned vocabulary, a quantized KV cache) beside layer
entries (a k-means head, an entropy-coded export too): they compose in apply_plan, plan_size equals the packed export to the byte, the JSON round-trips, and
load_compressed gives back the compressed model's outputs on the original tokenizer's ids."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from autocompress.evaluators.size import plan_size
from autocompress.export import load_compressed
from autocompress.export.save import save_compressed
from autocompress.kvcache.plan import KVCachePlan
from autocompress.kvcache.runtime import cache_kwargs
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from autocompress.vocab.plan import VocabPlan

L = "model.layers"


@pytest.mark.parametrize("head, entropy", [(LayerPlan(bits=8, group_size=None), None),
                                           (LayerPlan(bits=4, group_size=None, quant_method="kmeans"), "zstd")])
def test_drop_blocks_vocab_and_kv_cache_compose_and_export_exactly(tmp_path, head, entropy):
    lm = load_model("random:llama")
    batch = dict(lm.tokenizer(["the cat sat on the mat", "hello world, again"], return_tensors="pt", padding=True))
    plan = CompressionPlan({f"{L}.1.mlp.up_proj": LayerPlan(bits=4, group_size=32),
                            "lm_head": head},
                           kv_cache=KVCachePlan(bits=8), vocab=VocabPlan(keep=0.25), drop_blocks=[0])
    assert CompressionPlan.from_json(plan.to_json()) == plan
    assert "drop 1 block" in plan.summary() and "vocab" in plan.summary() and "kv 8" in plan.summary()
    model = apply_plan(copy.deepcopy(lm.model), plan, [batch], info=lm.info)
    assert len(model.model.layers) == len(lm.model.model.layers) - 1
    assert model.get_input_embeddings().weight.shape[0] < lm.model.get_input_embeddings().weight.shape[0]

    report = save_compressed(model, plan, lm.info, str(tmp_path), tokenizer=lm.tokenizer, entropy=entropy)
    assert report.tensor_bytes == report.predicted_bytes == plan_size(plan, lm.info).total_bytes
    written = json.loads((tmp_path / "export.json").read_text())
    assert written["drop_blocks"] == [0] and written["vocab"] == {"keep": 0.25}

    back = load_compressed(str(tmp_path))
    with torch.no_grad():
        ours = model(**batch, **cache_kwargs(model)).logits
        theirs = back.model(**batch, **cache_kwargs(back.model)).logits
    assert ours.shape[-1] == lm.model.config.vocab_size  # logits over the original ids
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
