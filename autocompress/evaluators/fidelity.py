"""Embedding fidelity: how close a compressed encoder's sentence embeddings stay to the original's.

Embeddings are pooled as sentence-transformers pools all-MiniLM-L6-v2: the mean of `last_hidden_state`
over the positions where attention_mask is 1, then L2-normalized.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from autocompress.data import make_batches
from autocompress.errors import UserError
from autocompress.evaluators._base import EVALUATORS, Evaluator, evaluation, model_device, output_tensor, to_device


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """L2-normalized mean of `hidden` [batch, seq, dim] over unmasked positions, as float32 [batch, dim]."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def embed(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Pooled, normalized embeddings [n_texts, dim] on the CPU (float32) for the tokenized `batches`."""
    device = model_device(model)
    out = []
    with evaluation(model):
        for batch in batches:
            b = to_device(batch, device)
            hidden = output_tensor(model(**b), "last_hidden_state")
            out.append(mean_pool(hidden, b["attention_mask"]).cpu())
    return torch.cat(out)


def _topk_mask(emb: torch.Tensor, k: int) -> torch.Tensor:
    """[n, n] bool: row i marks the k nearest neighbours of text i by cosine similarity, itself excluded."""
    sim = emb @ emb.T
    sim.fill_diagonal_(-math.inf)
    idx = sim.topk(k, dim=1).indices
    return torch.zeros_like(sim, dtype=torch.bool).scatter_(1, idx, True)


@EVALUATORS.register("fidelity")
class FidelityEvaluator(Evaluator):
    """Compares sentence embeddings of a model with those of `reference_model` on `texts`.

    The texts are tokenized and the reference embeddings and neighbour sets computed once, here; the
    reference model is not kept. `top_k` is capped at len(texts) - 1. Raises `UserError` for fewer than
    two texts.
    """

    name = "fidelity"
    metrics: ClassVar[dict[str, str]] = {"fidelity": "higher", "fidelity_min": "higher",
                                         "topk_agreement": "higher"}

    def __init__(self, reference_model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 32,
                 max_length: int = 128, top_k: int = 10) -> None:
        if len(texts) < 2:
            raise UserError(f"fidelity needs at least 2 texts to compare neighbours; got {len(texts)}")
        if top_k < 1:
            raise UserError(f"fidelity top_k={top_k} must be at least 1")
        self.batches = make_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length)
        self.top_k = min(top_k, len(texts) - 1)
        self.reference = embed(reference_model, self.batches)
        if not torch.isfinite(self.reference).all():
            raise ValueError("the reference model gives non-finite embeddings")
        self.reference_topk = _topk_mask(self.reference, self.top_k)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """{"fidelity": mean cosine similarity of each text's embedding to its reference (1.0 = identical),
        "fidelity_min": the lowest of those, "topk_agreement": mean share of each text's top_k nearest
        neighbours (within the texts) that the reference also has}. All higher-is-better, in [-1, 1] / [0, 1].
        Non-finite embeddings give NaN for all three."""
        emb = embed(model, self.batches)
        if emb.shape != self.reference.shape or not torch.isfinite(emb).all():
            return {"fidelity": math.nan, "fidelity_min": math.nan, "topk_agreement": math.nan}
        cos = (emb * self.reference).sum(dim=1)
        agree = (_topk_mask(emb, self.top_k) & self.reference_topk).sum(dim=1).to(torch.float32) / self.top_k
        return {"fidelity": cos.mean().item(), "fidelity_min": cos.min().item(),
                "topk_agreement": agree.mean().item()}
