"""generate_samples: greedy, so the same every time; one completion per prompt, without the prompt; the chat
template when the tokenizer has one."""

from __future__ import annotations

import pytest
import torch

from autocompress.evaluators.generation import DEFAULT_PROMPTS, generate_samples, prompt_ids
from autocompress.loading import load_model


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama")


def test_greedy_completions_are_deterministic_and_new(llama):
    model, tok = llama.model, llama.tokenizer
    model.train()
    first = generate_samples(model, tok, max_new_tokens=6)
    assert model.training  # the mode is put back
    assert first == generate_samples(model, tok, max_new_tokens=6)
    assert [p for p, _ in first] == list(DEFAULT_PROMPTS) and len(DEFAULT_PROMPTS) >= 3
    for prompt, completion in first:
        ids = prompt_ids(tok, prompt)
        with torch.no_grad():
            whole = model.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=6, pad_token_id=tok.pad_token_id)
        model.train()
        text = tok.decode(whole[0], skip_special_tokens=True)
        new = tok.decode(whole[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert completion == new and completion  # the new tokens only (WordPiece may glue them to the prompt)
        assert prompt.lower() not in completion.lower() and text.startswith(prompt.lower())
        assert 0 < whole.shape[1] - ids.shape[1] <= 6
    model.eval()


def test_plain_prompts_without_a_chat_template(llama):
    tok = llama.tokenizer
    assert not getattr(tok, "chat_template", None)
    assert prompt_ids(tok, "Two plus two equals").tolist() == tok("Two plus two equals", return_tensors="pt")[
        "input_ids"].tolist()  # the plain text, with the tokenizer's own special tokens
    (only,) = generate_samples(llama.model, tok, ["Hello"], max_new_tokens=3)
    assert only[0] == "Hello" and only[1]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_samples(llama.model, tok, ["Hello"], max_new_tokens=0)


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2):
    model, tok = smollm2
    france = DEFAULT_PROMPTS[0]
    assert "France" in france
    assert "<|im_start|>user" in tok.decode(prompt_ids(tok, france)[0])  # through the chat template
    ((prompt, completion),) = generate_samples(model, tok, [france], max_new_tokens=16)
    assert "Paris" in completion and "<|im_start|>" not in completion and not completion.startswith(france)
