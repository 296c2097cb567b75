"""Greedy completions of a few prompts: what a compressed causal LM actually says, for the report and the
model card (a metric says how far it drifted; a sample shows whether it still answers).

`generate_samples(model, tokenizer, prompts)` decodes greedily (`do_sample=False`), one prompt at a time (no
padding), so the same model gives the same completions every time. A tokenizer with a chat template (an
instruction-tuned model such as SmolLM2-Instruct) gets each prompt as one user message followed by the
assistant's turn; any other tokenizer gets the prompt as plain text. The completion is the decoded new
tokens only (special tokens dropped, whitespace stripped), never the prompt.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import nn

from autocompress.evaluators._base import evaluation, model_device
from autocompress.kvcache.runtime import cache_kwargs

# short factual questions: an instruction-tuned model answers them, a base model continues the text
DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "At what temperature does water boil at sea level?",
    "What is the chemical symbol for gold?",
    "How many days are in a week?",
    "Who wrote Romeo and Juliet?",
)


def prompt_ids(tokenizer: Any, prompt: str) -> torch.Tensor:
    """[1, n] input ids of `prompt`: through the tokenizer's chat template as a user message with the
    assistant turn opened, when it has a template; else the plain text with the tokenizer's usual special
    tokens."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def generate_samples(model: nn.Module, tokenizer: Any, prompts: Sequence[str] = DEFAULT_PROMPTS,
                     max_new_tokens: int = 32) -> list[tuple[str, str]]:
    """[(prompt, completion)] in the order of `prompts`: at most `max_new_tokens` tokens, greedy, stopping at
    the model's end-of-sequence token. The model's weights and train/eval mode are left as they were."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    with evaluation(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generation-config notes (sampling settings unused when greedy)
        for prompt in prompts:
            ids = prompt_ids(tokenizer, prompt).to(device)
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=pad, temperature=None,
                                       top_p=None, top_k=None, **cache_kwargs(model))
            completion = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip()
            out.append((prompt, completion))
    return out
