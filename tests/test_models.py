"""The inventory `inspect_model` takes of a loaded model: layers, structures, embedding tables."""

import pytest
import torch

from autocompress.loading import load_model


@pytest.mark.parametrize("spec, task, n_linear, prefix", [
    ("random:bert", "embedding", 13, "encoder.layer"),
    ("random:llama", "causal-lm", 15, "model.layers"),
    ("random:gpt2", "causal-lm", 9, "transformer.h"),
])
def test_random_models_inventory(spec, task, n_linear, prefix):
    lm = load_model(spec)
    info = lm.info
    assert lm.task == task and info.block_prefix == prefix and len(info.layers) == n_linear
    assert {s.kind for s in info.structures.values()} == {"heads", "neurons"}
    assert info.total_params == sum(p.numel() for p in {id(p): p for p in lm.model.parameters()}.values())
    for s in info.structures.values():
        for name in (*s.producers, s.consumer):
            assert name in info.layers


def test_real_minilm_inventory(minilm):
    info = minilm.info
    assert minilm.task == "embedding" and info.model_type == "bert"
    assert info.total_params == 22_713_216  # all-MiniLM-L6-v2: 22.7M parameters
    assert len(info.targets_by_default()) == 36  # 6 blocks x (q, k, v, o, up, down)
    heads = info.structures["encoder.layer.0.attention.self"]
    assert (heads.units, heads.unit_size) == (12, 32)
    assert info.structures["encoder.layer.5.intermediate"].units == 1536
    batch = minilm.tokenizer(["a sentence to embed"], return_tensors="pt")
    with torch.no_grad():
        assert minilm.model(**batch).last_hidden_state.shape[-1] == 384


def test_embedding_tables_and_ties():
    bert = load_model("random:bert").info
    assert {n: (e.num_embeddings, e.embedding_dim, e.tied_to) for n, e in bert.embeddings.items()} == {
        "embeddings.word_embeddings": (30522, 64, None), "embeddings.position_embeddings": (128, 64, None),
        "embeddings.token_type_embeddings": (2, 64, None)}
    gpt2 = load_model("random:gpt2").info
    assert gpt2.embeddings["transformer.wte"].tied_to == "lm_head"  # one weight: compressed as the Linear
    assert gpt2.embeddings["transformer.wpe"].tied_to is None
    assert load_model("random:llama").info.embeddings["model.embed_tokens"].tied_to is None
    tied = load_model("random:llama-tied")  # as SmolLM2: the table is lm_head's weight, grouped-query attention
    assert tied.model.lm_head.weight is tied.model.model.embed_tokens.weight
    assert tied.info.embeddings["model.embed_tokens"].tied_to == "lm_head"
    assert tied.info.structures["model.layers.0.self_attn"].kv_groups == 2
    assert tied.info.total_params == load_model("random:llama").info.total_params - 30522 * 64 - 2 * 2 * 32 * 64
