"""Compiled decoding: `model.generate` with a static KV cache and `torch.compile`d decode steps, on any device.

On a CPU a small decoder's eager decode step is mostly Python dispatch and small-tensor glue (casts, cats,
norms) around the matrix products: for SmolLM2-135M with the int4 kernels of `kernels.py` the products are
under half of the step. Compiling the step fuses that glue; transformers' own `generate` does it when the
cache is static and the compile config allows the device, which this module arranges:

- `cache_length` sizes the static cache to a bucket (a power of two, at least `MIN_CACHE`) holding the prompt
  and the new tokens. The compiled step has one shape per bucket, so a new prompt length or token budget
  compiles again only when it crosses into a new bucket (a cold compile takes tens of seconds on a few cores;
  torch's inductor cache keeps the result on disk for the next process).
- `generate_kwargs` returns the keyword arguments for `model.generate(...)`: a fresh `StaticCache` of that
  length and a `CompileConfig` (inductor, static shapes, no CUDA graphs) flagged for every device.
- `fast_generate` does both and calls `model.generate`.

The prefill runs eager (transformers compiles only the one-token steps). A static cache is read whole at
every step, so a bucket much longer than the tokens in use costs attention time: the buckets keep that under
2x. Outputs are the eager model's up to floating-point reassociation (the greedy tokens of the tests agree).
A model that carries a quantized KV-cache plan (`autocompress.kvcache.runtime`) needs its own cache class and
is refused here: use `model.generate(**cache_kwargs(model))` for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from autocompress.errors import UserError

MIN_CACHE = 256


def cache_length(prompt_tokens: int, max_new_tokens: int, minimum: int = MIN_CACHE) -> int:
    """The static cache's length for a prompt of `prompt_tokens` and `max_new_tokens` more: the smallest power
    of two >= both their sum and `minimum`. Raises `UserError` for a negative count or an empty prompt."""
    if prompt_tokens < 1 or max_new_tokens < 0:
        raise UserError(f"fast decode needs a prompt of at least 1 token and max_new_tokens >= 0 "
                        f"(got {prompt_tokens} and {max_new_tokens})")
    need = max(prompt_tokens + max_new_tokens, minimum)
    return 1 << (need - 1).bit_length()


def compile_config():
    """transformers' `CompileConfig` for the decode steps: inductor with static shapes and mode "default" (the
    "reduce-overhead" default records CUDA graphs, which only CUDA has), allowed on every device (transformers
    compiles on accelerators only unless told)."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, dynamic=False, backend="inductor", mode="default")
    config._compile_all_devices = True  # transformers' own switch for compiling off accelerators
    return config


def require_causal_lm(model: nn.Module) -> None:
    """Raise `UserError` unless `model` is a decoder-only causal LM with a `generate` method."""
    name = type(model).__name__
    if not hasattr(model, "generate") or getattr(getattr(model, "config", None), "is_encoder_decoder", False) \
            or not ("CausalLM" in name or "LMHead" in name):
        raise UserError(f"decoding needs a decoder-only causal language model; {name} is not one")


def _check(model: nn.Module) -> None:
    from autocompress.kvcache.runtime import kv_plan_of

    require_causal_lm(model)
    if not callable(getattr(model, "get_compiled_call", None)):
        raise UserError(f"{type(model).__name__} cannot compile its forward through transformers; "
                        "use model.generate(...) without fast decode")
    if kv_plan_of(model) is not None:
        raise UserError("this model carries a quantized KV-cache plan, which needs its own cache: use "
                        "model.generate(**autocompress.kvcache.runtime.cache_kwargs(model)) instead of fast decode")


def generate_kwargs(model: nn.Module, prompt_tokens: int, max_new_tokens: int) -> dict[str, Any]:
    """Keyword arguments that make `model.generate(..., max_new_tokens=max_new_tokens)` decode with compiled
    steps: {"cache": a new `StaticCache` of `cache_length(...)` positions on the model's device and dtype,
    "compile_config": `compile_config()`}. One cache per call (it fills as it runs). Raises `UserError` for a
    model that is not a decoder-only causal LM or that carries a KV-cache plan."""
    from transformers import StaticCache

    _check(model)
    length = cache_length(prompt_tokens, max_new_tokens)
    cache = StaticCache(config=model.config, max_cache_len=length)
    return {"cache": cache, "compile_config": compile_config()}


def fast_generate(model: nn.Module, inputs: Mapping[str, torch.Tensor], max_new_tokens: int,
                  **generate: Any) -> torch.Tensor:
    """`model.generate(**inputs, max_new_tokens=..., **generate)` with compiled decode steps (see the module
    docstring): the token ids, prompt included. `inputs` holds `input_ids` (and optionally `attention_mask`)
    as a tokenizer returns them. Runs under `torch.inference_mode()`."""
    ids = inputs["input_ids"]
    kwargs = generate_kwargs(model, int(ids.shape[-1]), max_new_tokens)
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs, **generate)
