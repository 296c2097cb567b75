"""Compressed random models exported once per session: every layout, RTN, GPTQ and k-means codebooks, sym and
asym, quantized embedding tables, and smoothed (SmoothQuant) W8A8 layers."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from autocompress.plan import CompressionPlan, LayerPlan

B = "encoder.layer"
PLANS = {
    "random:bert": {
        f"{B}.0.attention.self.query": LayerPlan(bits=4, group_size=32),
        f"{B}.0.attention.self.key": LayerPlan(bits=3, group_size=None, symmetric=False, quant_method="gptq"),
        f"{B}.0.attention.self.value": LayerPlan(bits=8, group_size=None, act_bits=8),
        f"{B}.0.attention.output.dense": LayerPlan(sparsity=0.5),
        f"{B}.0.intermediate.dense": LayerPlan(pattern="2:4", bits=4, group_size=32),
        f"{B}.0.output.dense": LayerPlan(bits=8, group_size=None, symmetric=False, quant_method="gptq"),
        f"{B}.1.intermediate": LayerPlan(sparsity=0.25, pattern="structured"),
        f"{B}.1.attention.self": LayerPlan(sparsity=0.25, pattern="structured"),
        f"{B}.1.attention.self.query": LayerPlan(rank=0.25, bits=4, group_size=16),
        f"{B}.1.attention.self.key": LayerPlan(sparsity=0.5, bits=8, group_size=None),
        f"{B}.1.output.dense": LayerPlan(pattern="2:4"),
        f"{B}.1.attention.output.dense": LayerPlan(act_bits=8),
        f"{B}.1.intermediate.dense": LayerPlan(bits=3, group_size=16, quant_method="kmeans"),  # rows pruned
        "embeddings.word_embeddings": LayerPlan(bits=4, group_size=32),
        "embeddings.position_embeddings": LayerPlan(bits=8, group_size=None, symmetric=False),
    },
    "random:gpt2": {
        "transformer.h.0.attn.c_attn": LayerPlan(bits=4, group_size=32, quant_method="gptq"),
        "transformer.h.0.attn.c_proj": LayerPlan(bits=3, group_size=None, symmetric=False, quant_method="gptq",
                                                 act_bits=8),
        "transformer.h.0.mlp.c_fc": LayerPlan(pattern="2:4", bits=8, group_size=None),
        "transformer.h.0.mlp.c_proj": LayerPlan(sparsity=0.5),
        "transformer.h.1.mlp.c_proj": LayerPlan(sparsity=0.6, bits=4, group_size=64, symmetric=False),
        "transformer.h.1.attn": LayerPlan(sparsity=0.25, pattern="structured"),
        "transformer.h.1.mlp": LayerPlan(sparsity=0.25, pattern="structured"),
        "transformer.h.1.attn.c_attn": LayerPlan(rank=0.25),
        "transformer.h.1.mlp.c_fc": LayerPlan(sparsity=0.5, bits=4, group_size=None, quant_method="kmeans"),  # Conv1D
        "transformer.h.1.attn.c_proj": LayerPlan(bits=8, group_size=None, act_bits=8, smooth=0.5),  # Conv1D, pruned
        "lm_head": LayerPlan(bits=4, group_size=32),  # tied to transformer.wte
        "transformer.wpe": LayerPlan(bits=3, group_size=16),
    },
    "random:llama": {
        "model.layers.0.self_attn.q_proj": LayerPlan(bits=4, group_size=32, symmetric=False, quant_method="gptq"),
        "model.layers.0.self_attn.k_proj": LayerPlan(bits=6, group_size=16),
        "model.layers.0.self_attn.v_proj": LayerPlan(bits=8, group_size=None, act_bits=8, smooth=0.5),
        "model.layers.0.self_attn.o_proj": LayerPlan(act_bits=8, smooth=0.8),
        "model.layers.0.mlp.down_proj": LayerPlan(bits=8, group_size=None, symmetric=False, act_bits=8, smooth=0.5),
        "model.layers.0.mlp.gate_proj": LayerPlan(sparsity=0.5, bits=4, group_size=32),
        "model.layers.0.mlp.up_proj": LayerPlan(pattern="2:4", quant_method="gptq", bits=5, group_size=None),
        "model.layers.1.mlp": LayerPlan(sparsity=0.25, pattern="structured"),
        "model.layers.1.self_attn": LayerPlan(sparsity=0.5, pattern="structured"),
        "model.layers.1.mlp.down_proj": LayerPlan(rank=0.25, bits=8, group_size=None, act_bits=8),
        "model.layers.1.self_attn.o_proj": LayerPlan(rank=0.25, bits=4, quant_method="kmeans"),
        "model.layers.1.mlp.gate_proj": LayerPlan(pattern="2:4", bits=3, quant_method="kmeans", act_bits=8),
        "lm_head": LayerPlan(bits=8, group_size=None),
        "model.embed_tokens": LayerPlan(bits=5, group_size=64, symmetric=False),
    },
    "random:llama-tied": {  # model.embed_tokens is tied to lm_head: the table's entry, as space.embeddings writes it
        "model.layers.0.self_attn.q_proj": LayerPlan(bits=4, group_size=32, quant_method="gptq"),
        "model.layers.1.mlp": LayerPlan(sparsity=0.25, pattern="structured"),
        "model.layers.1.mlp.up_proj": LayerPlan(bits=6, group_size=32),
        "lm_head": LayerPlan(bits=4, group_size=32, symmetric=False),
    },
}


@dataclass
class Exported:
    spec: str
    loaded: Any  # the LoadedModel before compression
    model: torch.nn.Module  # what apply_plan returned
    plan: CompressionPlan
    path: str
    report: Any


def ids(n: int = 2, seq: int = 12) -> torch.Tensor:
    return torch.randint(0, 1000, (n, seq), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict[str, Exported]:
    from autocompress.export import save_compressed
    from autocompress.loading import load_model
    from autocompress.policies import apply_plan

    calib = [{"input_ids": ids(4, 16), "attention_mask": torch.ones(4, 16, dtype=torch.long)}]
    out = {}
    for spec, layers in PLANS.items():
        lm = load_model(spec)
        plan = CompressionPlan(layers)
        model = apply_plan(copy.deepcopy(lm.model), plan, calib, info=lm.info)
        path = str(tmp_path_factory.mktemp(spec.replace(":", "_")))
        report = save_compressed(model, plan, lm.info, path, tokenizer=lm.tokenizer)
        out[spec] = Exported(spec, lm, model, plan, path, report)
    return out
