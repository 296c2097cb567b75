"""Next-token agreement of a compressed causal LM with the original: KL divergence, top-1 agreement, and the
perplexity, all from one forward pass per batch.

These are the figures llama.cpp's `perplexity --kl-divergence` reports for its quantization types (mean
KLD, 99th-percentile KLD, "same top p"). Each predicted position (position t predicting token t+1, where
both are unmasked) gives the original model's next-token distribution P and the compressed model's Q.

Storing P in full is too big (positions x vocabulary x 4 bytes: 16,000 positions of a 49,152-token
vocabulary are 3 GB per worker), so the reference keeps, per position, its `top_k` most likely token ids
(int32) with their log-probabilities (float32), the log of the mass outside them and its argmax: 8 x top_k
+ 8 bytes per position (top_k 128: 1 KiB, so 16 MB for 128 texts of 128 tokens, 66 MB at 512 tokens).
`kl` is then the KL divergence of P and Q coarsened to those top_k tokens plus one "every other token"
bucket. By the data-processing inequality it is a lower bound of the full KL(P || Q); it is exactly 0 for
the original model, and equal to the full KL when top_k covers the vocabulary.

Measured gap on SmolLM2-135M-Instruct (benchmarks/next_token_kl.py; 16 passages of the python-docs source,
256 tokens each, 4,080 positions; RTN on the block Linears, relative gap = 1 - stored / full mean KL):

    plan                      full KL    top_k 32   top_k 128   top_k 512
    8-bit per channel         (filled from the measurement)
    4-bit per channel
    3-bit group 128

The default top_k = DEFAULT_TOP_K keeps the gap under 1% for these plans (table above).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

import torch
from torch import nn

from autocompress.data import make_batches
from autocompress.errors import UserError
from autocompress.evaluators._base import EVALUATORS, Evaluator, evaluation, model_device, output_tensor, safe_exp, \
    to_device

DEFAULT_TOP_K = 128
DEFAULT_TAIL_SAMPLES = 64
NAN_METRICS = ("kl", "kl_p99", "top1_agreement", "perplexity", "nll", "perplexity_ratio")
_FIELDS = ("ids", "logp", "rest", "tail_ids", "tail_logp", "argmax")


@dataclass
class ReferenceSketch:
    """The original model's next-token distributions in stored form, one row per predicted position in the
    order `predicted_rows` yields them: `ids` / `logp` [n, k] its k most likely tokens (most likely first) and
    their log-probabilities, `rest` [n] the log of the probability outside them (-inf when k covers the
    vocabulary), `tail_ids` / `tail_logp` [n, s] s tokens drawn from the distribution renormalized outside
    the top k (systematic sampling, module docstring) and their log-probabilities, and `argmax` [n] its most
    likely token (as `Tensor.argmax` picks it)."""

    ids: torch.Tensor
    logp: torch.Tensor
    rest: torch.Tensor
    tail_ids: torch.Tensor
    tail_logp: torch.Tensor
    argmax: torch.Tensor

    @classmethod
    def of(cls, logp: torch.Tensor, k: int, samples: int, generator: torch.Generator) -> "ReferenceSketch":
        """The stored form of float32 log-probabilities `logp` [n, vocab] (on their device); `generator` (a CPU
        generator) draws each row's sampling offset."""
        top = logp.topk(min(k, logp.shape[-1]), dim=-1)
        rest = _outside(logp, top.indices)
        offsets = torch.rand(logp.shape[0], generator=generator, dtype=torch.float64).to(logp.device)
        tail = _systematic_tail(logp, top.indices, rest, samples, offsets)
        return cls(top.indices.to(torch.int32), top.values, rest, tail.to(torch.int32), logp.gather(-1, tail),
                   logp.argmax(dim=-1).to(torch.int32))

    @classmethod
    def cat(cls, parts: Sequence["ReferenceSketch"]) -> "ReferenceSketch":
        """The rows of `parts` one after another, on the CPU."""
        return cls(*(torch.cat([getattr(p, f).cpu() for p in parts]) for f in _FIELDS))

    def rows(self, start: int, stop: int, device: torch.device) -> "ReferenceSketch":
        return ReferenceSketch(*(getattr(self, f)[start:stop].to(device) for f in _FIELDS))

    def __len__(self) -> int:
        return self.rest.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).numel() * getattr(self, f).element_size() for f in _FIELDS)


def _outside(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability mass of `logp` [n, vocab] outside the token ids [n, k] (-inf if none is)."""
    return logp.scatter(-1, ids.long(), -math.inf).logsumexp(dim=-1)


def _systematic_tail(logp: torch.Tensor, top: torch.Tensor, rest: torch.Tensor, samples: int,
                     offsets: torch.Tensor) -> torch.Tensor:
    """[n, samples] token ids drawn from each row's distribution outside its `top` ids, renormalized: the
    tokens whose cumulative probability (in vocabulary order) first passes (j + offset) / samples of the tail
    mass, j = 0..samples-1. A row without tail mass gets token 0 (its weight, exp(rest), is 0)."""
    tail = (logp.double() - rest.double().unsqueeze(-1)).exp().scatter(-1, top.long(), 0.0)
    cum = tail.cumsum(dim=-1)
    total = cum[:, -1:].contiguous()
    points = (torch.arange(samples, dtype=torch.float64, device=logp.device) + offsets.unsqueeze(-1)) / samples
    idx = torch.searchsorted(cum, points * total, right=True)
    last = torch.searchsorted(cum, total, right=False)  # the last token with tail mass
    idx = torch.minimum(idx, last)
    return torch.where(total > 0, idx, torch.zeros_like(idx)).clamp_max(logp.shape[-1] - 1)


def coarse_kl(ref: ReferenceSketch, logq: torch.Tensor) -> torch.Tensor:
    """Per-position KL (nats, float64 [n]) of the reference and the float32 log-probabilities `logq`
    [n, vocab], both coarsened to the reference's top-k tokens plus one bucket for all the others: a lower
    bound of the full KL. A bucket the reference gives probability 0 adds 0; one it gives mass but Q none
    makes the KL inf."""
    lp, lq = ref.logp.double(), logq.gather(-1, ref.ids.long()).double()
    top = (lp.exp() * (lp - lq)).sum(dim=-1)
    p_rest, lq_rest = ref.rest.double().exp(), _outside(logq, ref.ids).double()
    rest = torch.where(p_rest > 0, p_rest * (ref.rest.double() - lq_rest), torch.zeros_like(p_rest))
    return top + rest


def tail_kl(ref: ReferenceSketch, logq: torch.Tensor) -> torch.Tensor:
    """Per-position estimate (float64 [n]) of what `coarse_kl` leaves out: p_rest x KL(P_tail || Q_tail),
    the KL of the two distributions renormalized outside the reference's top k, from the reference's tail
    samples with the nonnegative estimator E_P[(r - 1) - log r], r = q_tail / p_tail. 0 where the reference
    has no tail mass; exactly 0 for Q = P."""
    p_rest = ref.rest.double().exp()
    lq_rest = _outside(logq, ref.ids).double()
    log_r = (logq.gather(-1, ref.tail_ids.long()).double() - lq_rest.unsqueeze(-1)) \
        - (ref.tail_logp.double() - ref.rest.double().unsqueeze(-1))
    estimate = (torch.expm1(log_r) - log_r).mean(dim=-1)
    return torch.where(p_rest > 0, p_rest * estimate, torch.zeros_like(p_rest))


def stored_kl(ref: ReferenceSketch, logq: torch.Tensor) -> torch.Tensor:
    """The evaluator's per-position KL(P || Q): `coarse_kl` (exact on the top-k tokens and the mass outside
    them) plus `tail_kl` (sampled, unbiased), float64 [n]."""
    return coarse_kl(ref, logq) + tail_kl(ref, logq)


def full_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-position KL(P || Q) (nats, float64 [n]) over the whole vocabulary, from log-probabilities [n, vocab].
    The direct computation the stored form is measured against (tests, benchmarks); the evaluator never keeps
    `logp`."""
    lp, lq = logp.double(), logq.double()
    return torch.where(lp > -math.inf, lp.exp() * (lp - lq), torch.zeros_like(lp)).sum(dim=-1)


def predicted_rows(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                   ) -> Iterator[tuple[torch.Tensor | None, torch.Tensor]]:
    """(float32 logits [n, vocab], target ids [n]) of each text's predicted positions, one text at a time, in
    batch order: position t counts when it and its target t+1 are both unmasked. The logits are None when the
    batch's logits are not finite. Runs `model` once per batch (under `evaluation`)."""
    device = model_device(model)
    with evaluation(model):
        for batch in batches:
            b = to_device(batch, device)
            logits = output_tensor(model(**b), "logits")
            mask = (b["attention_mask"][:, :-1] * b["attention_mask"][:, 1:]).bool()
            finite = bool(torch.isfinite(logits).all())
            for row in range(logits.shape[0]):
                keep = mask[row]
                targets = b["input_ids"][row, 1:][keep]
                yield (logits[row, :-1][keep].to(torch.float32) if finite else None), targets


def count_predicted(batches: Sequence[dict[str, torch.Tensor]]) -> int:
    return sum(int((b["attention_mask"][:, :-1] * b["attention_mask"][:, 1:]).sum()) for b in batches)


@EVALUATORS.register("next_token")
class NextTokenEvaluator(Evaluator):
    """Compares a causal LM's next-token distributions with those of `reference_model` on `texts` (tokenized
    once, right-padded, truncated to `max_length`), and measures its perplexity on them.

    The reference's stored form (module docstring) and perplexity are computed once, here; the reference
    model is not kept. `tail_samples` 0 keeps no tail samples: `kl` is then the coarsened lower bound alone.
    The tail samples are drawn with a generator seeded by `seed`, so the stored form, and every metric, is
    the same in every process. Raises `UserError` when the texts give no token to predict, for `top_k` < 1
    or `tail_samples` < 0; ValueError when the reference's own logits are not finite.
    """

    name = "next_token"
    metrics: ClassVar[dict[str, str]] = {"kl": "lower", "kl_p99": "lower", "top1_agreement": "higher",
                                         "perplexity": "lower", "nll": "lower", "perplexity_ratio": "lower"}

    def __init__(self, reference_model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 8,
                 max_length: int = 128, top_k: int = DEFAULT_TOP_K, tail_samples: int = DEFAULT_TAIL_SAMPLES,
                 seed: int = 0) -> None:
        if type(top_k) is not int or top_k < 1:
            raise UserError(f"next_token top_k={top_k!r} must be a positive integer")
        if type(tail_samples) is not int or tail_samples < 0:
            raise UserError(f"next_token tail_samples={tail_samples!r} must be an integer >= 0")
        self.tail_samples = tail_samples
        self.batches = make_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length,
                                    keys=("input_ids", "attention_mask"))
        if count_predicted(self.batches) == 0:
            raise UserError("next-token metrics need texts of at least two tokens; the given texts have none "
                            "to predict")
        parts, nll, generator = [], 0.0, torch.Generator().manual_seed(seed)
        with contextlib.closing(predicted_rows(reference_model, self.batches)) as rows:
            for logits, targets in rows:
                if logits is None:
                    raise ValueError("the reference model gives non-finite logits")
                logp = torch.log_softmax(logits, dim=-1)
                parts.append(ReferenceSketch.of(logp, top_k, tail_samples, generator))
                nll -= logp.gather(-1, targets.unsqueeze(-1)).double().sum().item()
        self.reference = ReferenceSketch.cat(parts)
        self.reference_perplexity = safe_exp(nll / len(self.reference))
        if not math.isfinite(self.reference_perplexity):
            raise ValueError("the reference model gives a non-finite perplexity")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """{"kl": mean per-position KL(P_original || Q_model) in nats, in the stored form (module docstring;
        0 = unchanged), "kl_p99": its 99th percentile, "top1_agreement": share of positions whose most likely
        token is the original's (1 = all), "perplexity": exp(mean NLL), "nll": mean NLL in nats per token,
        "perplexity_ratio": perplexity / the original's}. NaN for all when the model's logits are not finite."""
        kls, agree, nll, done = [], 0, 0.0, 0
        with contextlib.closing(predicted_rows(model, self.batches)) as rows:
            for logits, targets in rows:
                if logits is None:
                    return dict.fromkeys(NAN_METRICS, math.nan)
                n = logits.shape[0]
                ref = self.reference.rows(done, done + n, logits.device)
                logq = torch.log_softmax(logits, dim=-1)
                kls.append((stored_kl(ref, logq) if self.tail_samples else coarse_kl(ref, logq)).cpu())
                agree += int((logq.argmax(dim=-1) == ref.argmax).sum())
                nll -= logq.gather(-1, targets.unsqueeze(-1)).double().sum().item()
                done += n
        kl = torch.cat(kls)
        mean_nll = nll / done
        perplexity = safe_exp(mean_nll)
        return {"kl": kl.mean().item(), "kl_p99": torch.quantile(kl, 0.99).item(), "top1_agreement": agree / done,
                "perplexity": perplexity, "nll": mean_nll, "perplexity_ratio": perplexity / self.reference_perplexity}
