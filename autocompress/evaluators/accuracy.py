"""Accuracy of a sequence-classification model on labeled texts."""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from autocompress.data import make_batches
from autocompress.errors import UserError
from autocompress.evaluators._base import EVALUATORS, Evaluator, evaluation, model_device, output_tensor, to_device

_INT = re.compile(r"^-?\d+$")


def resolve_labels(labels: Sequence[Any], label2id: Mapping[str, int] | None) -> list[int]:
    """Class ids for raw labels: ints as given; strings through `label2id` first, else as integer literals
    ("1" -> 1). Raises `UserError` naming an unknown label and the known ones."""
    out = []
    for label in labels:
        if isinstance(label, int) and not isinstance(label, bool):
            out.append(label)
        elif isinstance(label, str) and label2id and label in label2id:
            out.append(int(label2id[label]))
        elif isinstance(label, str) and _INT.match(label.strip()):
            out.append(int(label.strip()))
        else:
            known = ", ".join(map(str, sorted(label2id))) if label2id else "(the model has no label names)"
            raise UserError(f"label {label!r} is not a label of the model; use a class id or one of: {known}")
    return out


@EVALUATORS.register("accuracy")
class AccuracyEvaluator(Evaluator):
    """Share of `texts` whose argmax logit equals the label.

    `label2id` maps string labels; by default the `reference_model`'s `config.label2id` (the reference's outputs
    are not needed: accuracy compares with the labels). Without either, string labels that are not integer
    literals are mapped by the evaluated model's `config.label2id` on the first `evaluate`.
    Raises `UserError` for an unknown label, a class id outside the model's logits, or no texts.
    """

    name = "accuracy"
    metrics: ClassVar[dict[str, str]] = {"accuracy": "higher"}

    def __init__(self, reference_model: nn.Module | None, tokenizer: Any, texts: Sequence[str], labels: Sequence[Any],
                 label2id: Mapping[str, int] | None = None, batch_size: int = 32, max_length: int = 128) -> None:
        if len(texts) != len(labels):
            raise UserError(f"accuracy: {len(texts)} texts but {len(labels)} labels; give one label per text")
        if not texts:
            raise UserError("accuracy needs at least one labeled text")
        self.batches = make_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length)
        if label2id is None and reference_model is not None:
            label2id = getattr(getattr(reference_model, "config", None), "label2id", None)
        self.raw_labels = list(labels)
        self.labels: torch.Tensor | None = None
        if label2id is not None or all(isinstance(x, int) or _INT.match(str(x).strip()) for x in labels):
            self.labels = torch.tensor(resolve_labels(labels, label2id), dtype=torch.long)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """{"accuracy": correct / total in [0, 1]} (higher is better); NaN when the logits are not finite."""
        if self.labels is None:
            label2id = getattr(getattr(model, "config", None), "label2id", None)
            self.labels = torch.tensor(resolve_labels(self.raw_labels, label2id), dtype=torch.long)
        device = model_device(model)
        preds = []
        with evaluation(model):
            for batch in self.batches:
                logits = output_tensor(model(**to_device(batch, device)), "logits")
                if not torch.isfinite(logits).all():
                    return {"accuracy": math.nan}
                preds.append(logits.argmax(dim=-1).cpu())
        n_classes = logits.shape[-1]
        bad = self.labels[(self.labels < 0) | (self.labels >= n_classes)]
        if len(bad):
            raise UserError(f"label id {int(bad[0])} is outside the model's {n_classes} classes (0..{n_classes - 1})")
        return {"accuracy": (torch.cat(preds) == self.labels).to(torch.float32).mean().item()}
