"""AccuracyEvaluator on a tiny random BERT classifier, against a hand-computed argmax accuracy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from autocompress.data import load_labeled, load_texts
from autocompress.errors import UserError
from autocompress.evaluators import EVALUATORS, AccuracyEvaluator
from autocompress.loading import load_model


@pytest.fixture(scope="module")
def clf():
    return load_model("random:bert", task="sequence-classification")


@pytest.fixture(scope="module")
def texts():
    return load_texts(n=16, seed=4)


def _hand_predictions(clf, texts) -> list[int]:
    preds = []
    with torch.no_grad():
        for text in texts:
            enc = clf.tokenizer(text, truncation=True, max_length=128, return_tensors="pt")
            preds.append(int(clf.model(**enc).logits.argmax(-1)))
    return preds


def test_accuracy_matches_hand_argmax(clf, texts, tmp_path):
    labels = [i % 2 for i in range(len(texts))]
    path = tmp_path / "labeled.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    loaded_texts, loaded_labels = load_labeled(str(path))
    ev = EVALUATORS.get("accuracy")(clf.model, clf.tokenizer, loaded_texts, loaded_labels, batch_size=5)
    got = ev.evaluate(clf.model)
    preds = _hand_predictions(clf, texts)
    assert 0.0 <= got["accuracy"] <= 1.0
    assert got["accuracy"] == pytest.approx(sum(p == y for p, y in zip(preds, labels)) / len(labels))
    # labels equal to the predictions score 1, their opposites 0
    assert AccuracyEvaluator(clf.model, clf.tokenizer, texts, preds).evaluate(clf.model)["accuracy"] == 1.0
    flipped = AccuracyEvaluator(clf.model, clf.tokenizer, texts, [1 - p for p in preds])
    assert flipped.evaluate(clf.model)["accuracy"] == 0.0


def test_string_labels(clf, texts):
    preds = _hand_predictions(clf, texts[:6])
    names = [f"LABEL_{p}" for p in preds]
    label2id = dict(clf.model.config.label2id)
    named = AccuracyEvaluator(clf.model, clf.tokenizer, texts[:6], names, label2id=label2id)
    assert named.evaluate(clf.model)["accuracy"] == 1.0
    by_reference = AccuracyEvaluator(clf.model, clf.tokenizer, texts[:6], names)  # the reference's label2id
    assert by_reference.labels is not None and by_reference.evaluate(clf.model)["accuracy"] == 1.0
    lazy = AccuracyEvaluator(None, clf.tokenizer, texts[:6], names)  # mapped by the model's config on evaluate
    assert lazy.evaluate(clf.model)["accuracy"] == 1.0
    digits = AccuracyEvaluator(clf.model, clf.tokenizer, texts[:6], [str(p) for p in preds])  # CSV-style "0"/"1"
    assert digits.evaluate(clf.model)["accuracy"] == 1.0


def test_label_errors(clf, texts):
    with pytest.raises(UserError, match="'positive'"):
        AccuracyEvaluator(clf.model, clf.tokenizer, texts[:2], ["positive", "LABEL_0"], label2id={"LABEL_0": 0})
    with pytest.raises(UserError, match="outside"):
        AccuracyEvaluator(clf.model, clf.tokenizer, texts[:2], [0, 7]).evaluate(clf.model)
    with pytest.raises(UserError):
        AccuracyEvaluator(clf.model, clf.tokenizer, texts[:2], [0])


def test_nan_logits_give_nan(clf, texts):
    import copy

    broken = copy.deepcopy(clf.model)
    with torch.no_grad():
        broken.classifier.weight.fill_(math.nan)
    assert math.isnan(AccuracyEvaluator(clf.model, clf.tokenizer, texts[:3], [0, 1, 0]).evaluate(broken)["accuracy"])
