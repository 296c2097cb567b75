"""The evaluator contract and the helpers the model evaluators share.

An evaluator measures one aspect of a compressed model. It is built once, with whatever it needs from the
original model (reference embeddings, reference perplexity) and the evaluation data already tokenized; all
reference work happens in `__init__`. Then `evaluate(model)` is called on many compressed models and returns
named float metrics. It runs under `torch.inference_mode`, puts the model in eval mode for the call and
restores its previous mode, moves the batches to the model's device, and never changes weights. Non-finite
model outputs give NaN metrics instead of raising, so a search can mark the trial failed and move on.

Every evaluator of a model is built alike: `Cls(reference_model, tokenizer, texts, [labels,] batch_size=...,
max_length=..., ...)`, and `build_evaluator(name, ...)` builds one by its registered name (what the search's
workers and `autocompress apply` both call). `TASK_EVALUATOR` is the evaluator a task's search uses.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import nn

from autocompress.registry import Registry


class Evaluator:
    """One measurement. Subclasses set `name` and `metrics` and implement `evaluate`.

    `metrics` maps each metric `evaluate` returns to "higher" or "lower" (which way is better).
    `needs_model` is False for evaluators computed from the plan alone (`size`): those offer
    `evaluate_plan(plan)` instead of `evaluate(model)`.
    """

    name: ClassVar[str]
    metrics: ClassVar[Mapping[str, str]] = {}
    needs_model: ClassVar[bool] = True

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    @classmethod
    def better(cls, metric: str) -> str:
        """"higher" or "lower": the direction in which `metric` improves."""
        return cls.metrics[metric]

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self.evaluate(model)


EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator")
TASK_EVALUATOR = {"embedding": "fidelity", "causal-lm": "next_token", "sequence-classification": "accuracy"}


def build_evaluator(name: str, reference_model: nn.Module | None, tokenizer: Any, texts: Sequence[str],
                    labels: Sequence[Any] | None = None, **options: Any) -> Evaluator:
    """The evaluator registered as `name` (fidelity, next_token, perplexity, accuracy), built on `texts` against
    `reference_model`; `labels` only for accuracy; `options` (batch_size, max_length, ...) as its constructor
    takes them, None values left out (the evaluator's default)."""
    cls = EVALUATORS.get(name)
    options = {k: v for k, v in options.items() if v is not None}
    if labels is not None:
        options["labels"] = labels
    return cls(reference_model, tokenizer, texts, **options)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@contextlib.contextmanager
def evaluation(model: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode for the block; the model's previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def output_tensor(output: Any, attr: str) -> torch.Tensor:
    """`output.<attr>` of a Hugging Face model output, or its first element for a plain tuple."""
    value = getattr(output, attr, None)
    if value is None:
        value = output[0]
    return value


def safe_exp(x: float) -> float:
    """exp(x), with +inf instead of OverflowError and NaN kept as NaN."""
    if math.isnan(x):
        return math.nan
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
