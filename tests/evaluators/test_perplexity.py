"""PerplexityEvaluator on a tiny random GPT-2: finite, matches a hand computation, ratio 1 for the same model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from autocompress.data import load_texts
from autocompress.errors import UserError
from autocompress.evaluators import EVALUATORS, PerplexityEvaluator
from autocompress.loading import load_model


@pytest.fixture(scope="module")
def gpt2():
    return load_model("random:gpt2")


@pytest.fixture(scope="module")
def texts():
    return load_texts(n=12, seed=0)


def test_same_model_ratio_one_and_hand_nll(gpt2, texts):
    ev = EVALUATORS.get("perplexity")(gpt2.model, gpt2.tokenizer, texts, batch_size=5)
    got = ev.evaluate(gpt2.model)
    assert set(got) == {"perplexity", "nll", "perplexity_ratio"}
    assert math.isfinite(got["perplexity"]) and got["perplexity"] > 1
    assert got["perplexity_ratio"] == 1.0
    assert got["perplexity"] == pytest.approx(math.exp(got["nll"]))
    # by hand, one unpadded text at a time
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = gpt2.tokenizer(text, truncation=True, max_length=128, return_tensors="pt")["input_ids"]
            logits = gpt2.model(input_ids=ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    assert got["nll"] == pytest.approx(total / count, rel=1e-4)


def test_changed_model_changes_ratio(gpt2, texts):
    ev = PerplexityEvaluator(gpt2.model, gpt2.tokenizer, texts[:4])
    other = copy.deepcopy(gpt2.model)
    with torch.no_grad():
        other.transformer.h[0].mlp.c_fc.weight.mul_(5.0)
    got = ev.evaluate(other)
    assert math.isfinite(got["perplexity"]) and got["perplexity_ratio"] != 1.0
    assert "perplexity_ratio" not in PerplexityEvaluator(None, gpt2.tokenizer, texts[:4]).evaluate(other)


def test_nan_logits_give_nan(gpt2, texts):
    ev = PerplexityEvaluator(None, gpt2.tokenizer, texts[:3])
    broken = copy.deepcopy(gpt2.model)
    with torch.no_grad():
        broken.transformer.h[1].attn.c_proj.weight.fill_(math.nan)
    got = ev.evaluate(broken)
    assert math.isnan(got["perplexity"]) and math.isnan(got["nll"])


class OneTokenTokenizer:
    """Every text is a single token: nothing to predict."""

    pad_token_id = 0

    def __call__(self, texts, **kwargs):
        return {"input_ids": torch.full((len(texts), 1), 5), "attention_mask": torch.ones(len(texts), 1)}


def test_texts_with_nothing_to_predict():
    with pytest.raises(UserError, match="two tokens"):
        PerplexityEvaluator(None, OneTokenTokenizer(), ["a", "b"])
