"""The real MiniLM (a BERT encoder: the word table only, a dedicated [UNK] as the fallback): half the
vocabulary ranked on builtin sentences keeps held-out builtin sentences close to the original embeddings, and
the packed export agrees with plan_size to the byte and reloads to the same embeddings."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.data import load_texts, make_batches
from autocompress.evaluators.fidelity import FidelityEvaluator
from autocompress.export import load_compressed
from autocompress.export.save import save_compressed
from autocompress.plan import CompressionPlan
from autocompress.policies import apply_plan
from autocompress.vocab.plan import VocabPlan
from autocompress.vocab.runtime import id_map_of


@pytest.mark.slow  # the real MiniLM (22M parameters), 96 sentences
def test_half_the_vocabulary_on_its_domain(minilm, tmp_path):
    texts = load_texts("builtin", n=96, seed=3)
    calibration = make_batches(minilm.tokenizer, texts[:64], batch_size=16, max_length=64)
    plan = CompressionPlan({}, vocab=VocabPlan(keep=0.5))
    model = apply_plan(copy.deepcopy(minilm.model), plan, calibration, info=minilm.info)
    unk = minilm.tokenizer.unk_token_id
    assert int(id_map_of(model)[unk]) == int(id_map_of(model)[20000])  # [UNK] is the fallback
    fidelity = FidelityEvaluator(minilm.model, minilm.tokenizer, texts[64:], batch_size=16)
    score = fidelity.evaluate(model)["fidelity"]
    assert 0.8 < score < 0.99  # 0.887: 64 sentences leave many held-out words outside the kept half
    report = save_compressed(model, plan, minilm.info, str(tmp_path), tokenizer=minilm.tokenizer)
    assert report.tensor_bytes == report.predicted_bytes and report.predicted_bytes < 0.8 * 4 * 22_713_216
    reloaded = load_compressed(str(tmp_path)).model
    batch = make_batches(minilm.tokenizer, texts[64:72], batch_size=8, max_length=64)[0]
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).last_hidden_state, model(**batch).last_hidden_state)
