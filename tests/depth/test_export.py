"""A plan that drops a block through the three exports, on small random Llamas: the written model has the
smaller block count in its config, the packed format's bytes equal plan_size to the byte, and each format's
loader gives back exactly the compressed model's outputs (packed: `load_compressed`, with the plan's KV cache on
the renumbered blocks; compressed-tensors: transformers' `from_pretrained`; GGUF: transformers' GGUF loader)."""

from __future__ import annotations

import copy
import json

import torch

from autocompress.evaluators.size import plan_size
from autocompress.export import load_compressed
from autocompress.export.compressed_tensors import FORMAT as CT
from autocompress.export.gguf_writer import load_gguf, write_gguf
from autocompress.export.save import save_compressed
from autocompress.kvcache.plan import KVCachePlan
from autocompress.kvcache.runtime import kv_plan_of
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from tests.gguf_files import write_tiny_gguf

L = "model.layers"
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


def _logits(model, **kw):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=torch.ones_like(IDS), **kw).logits


def test_packed_format_writes_the_smaller_model_and_loads_it_back(tmp_path):
    lm = load_model("random:llama")
    plan = CompressionPlan({f"{L}.0.mlp.up_proj": LayerPlan(bits=2),  # in the dropped block: ignored
                            f"{L}.1.mlp.up_proj": LayerPlan(bits=4, group_size=32),
                            f"{L}.1.self_attn": LayerPlan(sparsity=0.5, pattern="structured"),
                            "lm_head": LayerPlan(bits=8, group_size=None)},
                           kv_cache=KVCachePlan(bits=4, layers={1: 8}), drop_blocks=[0])
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    report = save_compressed(model, plan, lm.info, str(tmp_path), tokenizer=lm.tokenizer)
    assert report.tensor_bytes == report.predicted_bytes == plan_size(plan, lm.info).total_bytes
    assert not report.differences
    written = json.loads((tmp_path / "export.json").read_text())
    assert written["drop_blocks"] == [0] and json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 1
    loaded = load_compressed(str(tmp_path))
    assert len(loaded.model.model.layers) == 1 and loaded.plan.drop_blocks == ()
    assert f"{L}.0.mlp.up_proj" in loaded.plan.layers and kv_plan_of(loaded.model) == KVCachePlan(bits=8)
    from autocompress.kvcache.runtime import cache_kwargs

    assert torch.equal(_logits(model, **cache_kwargs(model)), _logits(loaded.model, **cache_kwargs(loaded.model)))


def test_compressed_tensors_loads_in_transformers_with_one_block(tmp_path):
    lm = load_model("random:llama")
    plan = CompressionPlan({f"{L}.0.mlp.gate_proj": LayerPlan(bits=8, group_size=32),
                            f"{L}.0.self_attn.o_proj": LayerPlan(bits=4, group_size=None)}, drop_blocks=[1])
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    CT.write(model, plan, lm.info, tmp_path, tokenizer=lm.tokenizer)
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 1
    back = CT.load(str(tmp_path), "causal-lm")
    assert len(back.model.layers) == 1
    assert torch.equal(_logits(model.eval()), _logits(back))


def test_gguf_writes_one_block_and_transformers_reads_it(tmp_path):
    tiny = load_model(write_tiny_gguf(tmp_path / "tiny.gguf"))
    plan = CompressionPlan({f"{L}.0.mlp.up_proj": LayerPlan(bits=4, group_size=32),
                            f"{L}.1.mlp.up_proj": LayerPlan(bits=8, group_size=32)}, drop_blocks=[0])
    model = apply_plan(copy.deepcopy(tiny.model), plan, info=tiny.info)
    report = write_gguf(model, plan, tiny.info, tmp_path / "out", tokenizer=tiny.tokenizer)
    assert report.tensor_bytes == report.predicted_bytes and not report.differences
    back, _ = load_gguf(str(tmp_path / "out"))
    assert back.config.num_hidden_layers == 1 and len(back.model.layers) == 1
    assert torch.equal(_logits(model.eval()), _logits(back))
