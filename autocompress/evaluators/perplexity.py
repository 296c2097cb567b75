"""Perplexity of a causal language model on a fixed text set."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from autocompress.data import make_batches
from autocompress.errors import UserError
from autocompress.evaluators._base import EVALUATORS, Evaluator, evaluation, model_device, output_tensor, safe_exp, \
    to_device
from autocompress.kvcache.runtime import cache_kwargs


def mean_nll(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Mean next-token negative log-likelihood (nats) over every target token that is not padding.

    Position t predicts token t+1; a target counts when its attention_mask is 1. NaN when the logits are
    not finite."""
    device = model_device(model)
    total, count = 0.0, 0
    with evaluation(model):
        for batch in batches:
            b = to_device(batch, device)
            logits = output_tensor(model(**b, **cache_kwargs(model)), "logits")[:, :-1].to(torch.float32)
            if not torch.isfinite(logits).all():
                return math.nan
            targets = b["input_ids"][:, 1:]
            mask = b["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
            total += nll.item()
            count += int(mask.sum())
    return total / count


@EVALUATORS.register("perplexity")
class PerplexityEvaluator(Evaluator):
    """Perplexity on `texts` (tokenized once, right-padded, truncated to `max_length`).

    With a `reference_model` (None: no ratio), its perplexity is computed once here (the model is not kept) and
    `evaluate` also reports "perplexity_ratio". Raises `UserError` when the texts give no token to predict.
    """

    name = "perplexity"
    metrics: ClassVar[dict[str, str]] = {"perplexity": "lower", "nll": "lower", "perplexity_ratio": "lower"}

    def __init__(self, reference_model: nn.Module | None, tokenizer: Any, texts: Sequence[str], batch_size: int = 8,
                 max_length: int = 128) -> None:
        self.batches = make_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length,
                                    keys=("input_ids", "attention_mask"))
        targets = sum(int(b["attention_mask"][:, 1:].sum()) for b in self.batches)
        if targets == 0:
            raise UserError("perplexity needs texts of at least two tokens; the given texts have none to predict")
        self.reference_perplexity: float | None = None
        if reference_model is not None:
            self.reference_perplexity = safe_exp(mean_nll(reference_model, self.batches))
            if not math.isfinite(self.reference_perplexity):
                raise ValueError("the reference model gives a non-finite perplexity")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """{"perplexity": exp(mean NLL), "nll": mean NLL in nats per token, and with a reference model
        "perplexity_ratio": perplexity / reference perplexity (1.0 = unchanged)}; all lower-is-better.
        NaN for all when the model's logits are not finite."""
        nll = mean_nll(model, self.batches)
        result = {"perplexity": safe_exp(nll), "nll": nll}
        if self.reference_perplexity is not None:
            result["perplexity_ratio"] = result["perplexity"] / self.reference_perplexity
        return result
