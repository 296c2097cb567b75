"""fast_decode: bucketed static caches, compiled decode steps through transformers' generate, refusals."""

from __future__ import annotations

import pytest
import torch

from autocompress.errors import UserError
from autocompress.export import fast_generate, load_compressed
from autocompress.export.fast_decode import MIN_CACHE, cache_length, compile_config, generate_kwargs

from tests.export.conftest import ids


@pytest.mark.parametrize("prompt,new,expected", [
    (5, 10, MIN_CACHE), (1, 0, MIN_CACHE), (256, 0, 256), (200, 57, 512), (300, 300, 1024), (1000, 24, 1024),
])
def test_cache_length_is_the_bucket_holding_prompt_and_new_tokens(prompt, new, expected):
    assert cache_length(prompt, new) == expected
    assert cache_length(prompt, new, minimum=1) >= prompt + new


@pytest.mark.parametrize("prompt,new", [(0, 4), (3, -1)])
def test_cache_length_refuses_counts_that_cannot_be(prompt, new):
    with pytest.raises(UserError, match="fast decode needs a prompt"):
        cache_length(prompt, new)


def test_compile_config_is_static_and_allowed_off_accelerators():
    config = compile_config()
    assert (config.backend, config.mode, config.dynamic, config.fullgraph) == ("inductor", "default", False, False)
    assert config._compile_all_devices is True


def test_refuses_an_encoder_and_a_model_with_a_kv_cache_plan():
    from autocompress.kvcache.plan import KVCachePlan
    from autocompress.kvcache.runtime import attach_kv_cache
    from autocompress.loading import load_model

    with pytest.raises(UserError, match="decoder-only causal language model; BertModel"):
        generate_kwargs(load_model("random:bert").model, 4, 4)
    llama = load_model("random:llama").model
    attach_kv_cache(llama, KVCachePlan(bits=8))
    with pytest.raises(UserError, match="quantized KV-cache plan"):
        generate_kwargs(llama, 4, 4)


def test_generate_kwargs_give_a_fresh_static_cache_of_the_bucket():
    from transformers import StaticCache

    from autocompress.loading import load_model

    model = load_model("random:llama").model
    first, second = generate_kwargs(model, 300, 20), generate_kwargs(model, 300, 20)
    assert isinstance(first["cache"], StaticCache) and first["cache"] is not second["cache"]
    assert {layer.max_cache_len for layer in first["cache"].layers} == {512}


@pytest.mark.slow
def test_compiled_steps_give_the_eager_logits_on_int4_kernels(exported):
    """A packed export with int4 kernels and a 4-bit packed head: every compiled step's scores equal the eager
    model's logits at that position (teacher-forced on the generated tokens), and the compiled call is the one
    transformers ran."""
    cm = load_compressed(exported["random:llama-tied"].path, kernels=True)
    assert "int4" in cm.kernels.values()
    prompt = {"input_ids": ids(1, 9), "attention_mask": torch.ones(1, 9, dtype=torch.long)}
    out = fast_generate(cm.model, prompt, max_new_tokens=6, do_sample=False, output_scores=True,
                        return_dict_in_generate=True)
    assert hasattr(cm.model, "_compiled_call")  # transformers compiled the decode steps
    assert out.sequences.shape == (1, 15)
    with torch.inference_mode():
        eager = cm.model(input_ids=out.sequences).logits[0, 8:-1]  # the logits each generated token came from
    scores = torch.stack(out.scores, dim=1)[0]
    assert torch.equal(scores.argmax(-1), out.sequences[0, 9:])
    assert ((scores - eager).norm() / eager.norm()) < 1e-2
