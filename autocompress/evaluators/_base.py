"""The evaluator contract and the helpers the model evaluators share.

An evaluator measures one aspect of a compressed model. It is built once, with whatever it needs from the
original model (reference embeddings, reference perplexity) and the evaluation data already tokenized; all
reference work happens in `__init__`. Then `evaluate(model)` is called on many compressed models and returns
named float metrics. It runs under `torch.inference_mode`, puts the model in eval mode for the call and
restores its previous mode, moves the batches to the model's device, and never changes weights. Non-finite
model outputs give NaN metrics instead of raising, so a search can mark the trial failed and move on.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ClassVar, Iterator, Mapping

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
