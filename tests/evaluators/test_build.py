"""`build_evaluator`: every model evaluator built by name with one convention, as the search's workers and
`autocompress apply` build them; `TASK_EVALUATOR` names one per task."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.config import TASK_METRICS
from autocompress.data import load_texts
from autocompress.evaluators import EVALUATORS, TASK_EVALUATOR, build_evaluator
from autocompress.loading import load_model


@pytest.fixture(scope="module")
def texts():
    return load_texts(n=8, seed=2)


def _changed(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.9)
    return other


@pytest.mark.parametrize("name, spec, task", [("fidelity", "random:bert", "auto"),
                                              ("next_token", "random:llama", "auto"),
                                              ("perplexity", "random:gpt2", "auto")])
def test_built_by_name_measures_what_the_class_measures(name, spec, task, texts):
    lm = load_model(spec, task=task)
    built = build_evaluator(name, lm.model, lm.tokenizer, texts, batch_size=4, max_length=None)  # None: default
    assert type(built) is EVALUATORS.get(name)
    direct = EVALUATORS.get(name)(lm.model, lm.tokenizer, texts, batch_size=4)
    other = _changed(lm.model)
    assert built.evaluate(other) == direct.evaluate(other)
    assert built.evaluate(other) != built.evaluate(lm.model)  # it measures the change


def test_accuracy_takes_the_labels_and_the_references_label_names(texts):
    clf = load_model("random:bert", task="sequence-classification")
    with torch.no_grad():
        preds = [int(clf.model(**clf.tokenizer(t, return_tensors="pt")).logits.argmax()) for t in texts]
    names = [clf.model.config.id2label[p] for p in preds]
    built = build_evaluator("accuracy", clf.model, clf.tokenizer, texts, labels=names)
    assert built.evaluate(clf.model) == {"accuracy": 1.0}


def test_each_task_has_an_evaluator_whose_metrics_it_produces():
    assert set(TASK_EVALUATOR) == set(TASK_METRICS)
    for task, name in TASK_EVALUATOR.items():
        assert set(EVALUATORS.get(name).metrics) <= set(TASK_METRICS[task])
