"""export/gguf_arch.py: what the writer maps (llama), llama.cpp's q/k row order (undone exactly by
transformers' loader), and one-line refusals of what a llama GGUF cannot say."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, LlamaConfig

from autocompress.errors import UserError
from autocompress.export.gguf_arch import ARCHS, check_model, permute_rows, tensor_names


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (9, 3), (8, 2)])
def test_qk_rows_take_llama_cpp_order_and_transformers_undoes_it(heads, kv_heads):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    config = LlamaConfig(hidden_size=heads * 16, num_attention_heads=heads, num_key_value_heads=kv_heads)
    processor = LlamaTensorProcessor(config={"num_attention_heads": heads, "num_key_value_heads": kv_heads})
    for name, rows in (("blk.0.attn_q.weight", heads * 16), ("blk.0.attn_k.weight", kv_heads * 16)):
        w = torch.randn(rows, 64)
        permuted = permute_rows(w, name, config, ARCHS["llama"])
        assert not torch.equal(permuted, w)
        assert torch.equal(permute_rows(w[:, :2], name, config, ARCHS["llama"]), permuted[:, :2])  # per row
        back = processor.process(permuted.numpy(), name).weights
        assert torch.equal(torch.from_numpy(back), w)
    v = torch.randn(kv_heads * 16, 64)
    assert torch.equal(permute_rows(v, "blk.0.attn_v.weight", config, ARCHS["llama"]), v)


def test_tensor_names_from_the_gguf_tensor_map():
    names = tensor_names(["model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
                          "model.layers.1.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"],
                         ARCHS["llama"], 2)
    assert list(names.values()) == ["token_embd.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight",
                                    "output_norm.weight", "output.weight"]
    with pytest.raises(UserError, match="no GGUF name"):
        tensor_names(["model.layers.0.self_attn.extra.weight"], ARCHS["llama"], 2)


@pytest.mark.parametrize("config, task, message", [
    (AutoConfig.for_model("gpt2"), "causal-lm", "'gpt2' models are not mapped"),
    (AutoConfig.for_model("bert"), "embedding", "'bert' models are not mapped"),
    (LlamaConfig(), "embedding", "task 'embedding'"),
    (LlamaConfig(attention_bias=True), "causal-lm", "attention biases"),
    (LlamaConfig(hidden_act="gelu"), "causal-lm", "activation other than silu"),
    (LlamaConfig(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}), "causal-lm", "rope scaling"),
])
def test_what_a_llama_gguf_cannot_say_is_refused(config, task, message):
    with pytest.raises(UserError, match=message) as err:
        check_model(config, task)
    assert "\n" not in str(err.value)


def test_a_plain_llama_is_mapped():
    assert check_model(LlamaConfig(), "causal-lm") is ARCHS["llama"]
