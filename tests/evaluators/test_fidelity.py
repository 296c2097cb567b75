"""FidelityEvaluator: identical model scores 1, a perturbed one lower; pooling ignores padding."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from autocompress.data import load_texts, make_batches
from autocompress.errors import UserError
from autocompress.evaluators import EVALUATORS, FidelityEvaluator, embed
from autocompress.loading import load_model


@pytest.fixture(scope="module")
def texts():
    return load_texts(n=32, seed=0)


@pytest.fixture(scope="module")
def minilm_fidelity(minilm, texts):
    return FidelityEvaluator(minilm.model, minilm.tokenizer, texts, batch_size=16)


@pytest.fixture(scope="module")
def bert():
    return load_model("random:bert")


def _noisy(model, scale: float, seed: int = 0):
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in noisy.named_parameters():
            if name.endswith("weight") and p.dim() == 2 and "embeddings" not in name:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * scale)
    return noisy


def test_identical_minilm_scores_one(minilm, minilm_fidelity):
    got = minilm_fidelity.evaluate(minilm.model)
    assert set(got) == set(FidelityEvaluator.metrics)
    assert got["fidelity"] == pytest.approx(1.0, abs=1e-6)
    assert got["fidelity_min"] == pytest.approx(1.0, abs=1e-6)
    assert got["topk_agreement"] == 1.0
    assert minilm_fidelity.reference.shape == (32, 384) and minilm_fidelity.top_k == 10


def test_perturbed_minilm_scores_lower(minilm, minilm_fidelity):
    got = minilm_fidelity.evaluate(_noisy(minilm.model, 0.3))
    assert got["fidelity"] < 1 - 1e-3
    assert -1 <= got["fidelity_min"] <= got["fidelity"] < 1
    assert 0 <= got["topk_agreement"] <= 1


def test_pooling_ignores_padding(bert, texts):
    one = embed(bert.model, make_batches(bert.tokenizer, texts[:8], batch_size=1))
    padded = embed(bert.model, make_batches(bert.tokenizer, texts[:8], batch_size=8))
    assert torch.allclose(one, padded, atol=1e-5)
    assert torch.allclose(one.norm(dim=1), torch.ones(8), atol=1e-6)


def test_nan_model_gives_nan_and_mode_is_restored(bert, texts):
    ev = EVALUATORS.get("fidelity")(bert.model, bert.tokenizer, texts[:6], top_k=3)
    broken = copy.deepcopy(bert.model)
    with torch.no_grad():
        broken.encoder.layer[0].output.dense.weight[0, 0] = math.nan
    broken.train()
    got = ev.evaluate(broken)
    assert all(math.isnan(v) for v in got.values())
    assert broken.training  # evaluate restores the train/eval mode it found
    assert ev.evaluate(bert.model)["topk_agreement"] == 1.0


def test_fidelity_input_errors(bert):
    with pytest.raises(UserError):
        FidelityEvaluator(bert.model, bert.tokenizer, ["only one text here"])
    ev = FidelityEvaluator(bert.model, bert.tokenizer, ["first text", "second text", "third text"], top_k=10)
    assert ev.top_k == 2
