import pytest

from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.validation import validate_plan


@pytest.fixture(scope="module")
def info():
    return load_model("random:bert").info


def check(info, layers):
    validate_plan(CompressionPlan(layers), info)


def test_valid_plan_passes(info):
    check(info, {"encoder.layer.0.attention.self.query": LayerPlan(bits=4, rank=8),
                 "encoder.layer.0.intermediate": LayerPlan(sparsity=0.5, pattern="structured")})


def test_unknown_layer_suggests_a_name(info):
    with pytest.raises(UserError, match="did you mean 'encoder.layer.0.attention.self.query'"):
        check(info, {"encoder.layer.0.attention.self.qeury": LayerPlan(bits=4)})


def test_rank_too_large(info):
    with pytest.raises(UserError, match=r"rank 65 is larger than the layer allows \(min\(in, out\) = 64\)"):
        check(info, {"encoder.layer.0.attention.self.query": LayerPlan(rank=65)})


def test_structured_on_linear_and_settings_on_structure(info):
    with pytest.raises(UserError, match="put it on the structure 'encoder.layer.0.intermediate'"):
        check(info, {"encoder.layer.0.intermediate.dense": LayerPlan(sparsity=0.5, pattern="structured")})
    with pytest.raises(UserError, match="is a structure"):
        check(info, {"encoder.layer.0.intermediate": LayerPlan(bits=4)})


def test_gqa_heads_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    from autocompress.models import inspect_model

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100)
    info = inspect_model(LlamaForCausalLM(cfg), "causal-lm")
    with pytest.raises(UserError, match="grouped-query"):
        check(info, {"model.layers.0.self_attn": LayerPlan(sparsity=0.5, pattern="structured")})


def test_rank_that_grows_the_layer_refused(info):
    # 64x64: two factors of rank r hold 128*r weights, more than 4096 above r = 32
    check(info, {"encoder.layer.0.attention.self.query": LayerPlan(rank=32)})
    with pytest.raises(UserError, match="rank 33 would grow the layer"):
        check(info, {"encoder.layer.0.attention.self.query": LayerPlan(rank=33)})


def test_embedding_tables_take_rtn_weight_quantization_only(info):
    check(info, {"embeddings.word_embeddings": LayerPlan(bits=4, group_size=32, symmetric=False)})
    for bad, words in [(LayerPlan(bits=8, act_bits=8), "drop act_bits"), (LayerPlan(sparsity=0.5), "drop sparsity"),
                       (LayerPlan(rank=8), "drop rank"), (LayerPlan(bits=4, quant_method="gptq"), "use rtn")]:
        with pytest.raises(UserError, match=f"'embeddings.word_embeddings' is an embedding table.*{words}"):
            check(info, {"embeddings.word_embeddings": bad})


def test_tied_embedding_table_names_its_linear():
    gpt2 = load_model("random:gpt2").info
    with pytest.raises(UserError, match="tied to the Linear 'lm_head'.*quantize 'lm_head' instead"):
        validate_plan(CompressionPlan({"transformer.wte": LayerPlan(bits=8)}), gpt2)
