"""Next-token agreement of a compressed causal LM with the original: KL divergence, top-1 agreement, and the
perplexity, all from one forward pass per batch.

These are the figures llama.cpp's `perplexity --kl-divergence` reports for its quantization types (mean
KLD, 99th-percentile KLD, "same top p"). Each predicted position (position t predicting token t+1, where
both are unmasked) gives the original model's next-token distribution P and the compressed model's Q.

Storing P in full is too big (positions x vocabulary x 4 bytes: 16,000 positions of a 49,152-token
vocabulary are 3 GB per worker). The reference keeps, per position (`ReferenceSketch`):
  - its `top_k` most likely tokens (int32 ids, float32 log-probabilities) and the log of the mass outside
    them, p_rest: KL over those k tokens plus one "every other token" bucket is exact (`coarse_kl`), but
    only a lower bound of the full KL (data-processing inequality), and alone it misses 5-24% of it below;
  - `tail_samples` tokens drawn from P renormalized outside the top k (systematic sampling in vocabulary
    order with a seeded offset per position), with their log-probabilities. What the coarse KL misses is
    exactly p_rest x KL(P_tail || Q_tail); `tail_kl` estimates it with the nonnegative, unbiased estimator
    E_P[(r - 1) - log r], r = q_tail / p_tail (Q's tail mass is computed exactly from its full logits);
  - its argmax (int32), for top-1 agreement.
So `kl` is unbiased for the full KL, exactly 0 for the original model (every term vanishes bit for bit),
and equal to the full KL when top_k covers the vocabulary. Each position costs 8 x top_k + 8 x
tail_samples + 8 bytes: 1,544 bytes at the defaults (top_k 128, 64 samples), i.e. 25 MB for 128 texts
of 128 tokens, 50 MB at 256 tokens and 101 MB at 512, held on the CPU.

Measured on SmolLM2-135M-Instruct (benchmarks/next_token_kl.py, results/next_token_kl.md: 16 python-docs
passages of up to 256 tokens, 4,080 positions; RTN on every block Linear; error = stored / full mean KL - 1,
with samples the largest over 3 sampling seeds):

    plan                    full KL   top1    k=32 coarse  k=32 s=64  k=128 coarse  k=128 s=64  k=512 s=64
    RTN 8-bit per channel   0.00312   0.969   -23.8%       -0.06%     -12.2%        -0.05%      -0.05%
    RTN 4-bit per channel   0.707     0.572   -18.5%       -0.13%     -9.4%         -0.11%      -0.06%
    RTN 3-bit group 128     2.94      0.202   -15.2%       +0.58%     -7.7%         -0.22%      -0.04%

At the defaults the mean KL is within 0.22% of the full KL and its 99th percentile within 1.1%. Fewer
samples or a smaller k make the sampled part noisier for badly damaged models (k=32 with 16 samples: +12.6%
on the 3-bit plan), since r is large where Q puts mass the reference does not.
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
from autocompress.kvcache.runtime import cache_kwargs

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
        tail = _systematic_draw(_tail_cdf(logp, top.indices, rest), samples, offsets)
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


def _tail_cdf(logp: torch.Tensor, top: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """[n, vocab] float64: the cumulative probability, in vocabulary order, of each row's distribution outside
    its `top` ids, renormalized (the last column is 1 up to rounding, 0 for a row without tail mass)."""
    tail = (logp.double() - rest.double().unsqueeze(-1)).exp().scatter(-1, top.long(), 0.0)
    return tail.cumsum(dim=-1)


def _systematic_draw(cdf: torch.Tensor, samples: int, offsets: torch.Tensor) -> torch.Tensor:
    """[n, samples] token ids: the tokens at which each row's tail `cdf` first passes (j + offset) / samples
    of its total, j = 0..samples-1 (systematic sampling: each draw picks a token with its tail probability).
    A row without tail mass gets token 0 (its weight, exp(rest), is 0)."""
    total = cdf[:, -1:].contiguous()
    points = (torch.arange(samples, dtype=torch.float64, device=cdf.device) + offsets.unsqueeze(-1)) / samples
    idx = torch.searchsorted(cdf, points * total, right=True)
    last = torch.searchsorted(cdf, total, right=False)  # the last token with tail mass
    idx = torch.minimum(idx, last)
    return torch.where(total > 0, idx, torch.zeros_like(idx)).clamp_max(cdf.shape[-1] - 1)


def coarse_kl(ref: ReferenceSketch, logq: torch.Tensor, lq_rest: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position KL (nats, float64 [n]) of the reference and the float32 log-probabilities `logq`
    [n, vocab], both coarsened to the reference's top-k tokens plus one bucket for all the others: a lower
    bound of the full KL. A bucket the reference gives probability 0 adds 0; one it gives mass but Q none
    makes the KL inf. `lq_rest`: Q's log-mass outside the top k, if already computed."""
    lp, lq = ref.logp.double(), logq.gather(-1, ref.ids.long()).double()
    top = (lp.exp() * (lp - lq)).sum(dim=-1)
    p_rest = ref.rest.double().exp()
    lq_rest = (_outside(logq, ref.ids) if lq_rest is None else lq_rest).double()
    rest = torch.where(p_rest > 0, p_rest * (ref.rest.double() - lq_rest), torch.zeros_like(p_rest))
    return top + rest


def tail_kl(ref: ReferenceSketch, logq: torch.Tensor, lq_rest: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position estimate (float64 [n]) of what `coarse_kl` leaves out: p_rest x KL(P_tail || Q_tail),
    the KL of the two distributions renormalized outside the reference's top k, from the reference's tail
    samples with the nonnegative estimator E_P[(r - 1) - log r], r = q_tail / p_tail. 0 where the reference
    has no tail mass; exactly 0 for Q = P."""
    p_rest = ref.rest.double().exp()
    lq_rest = (_outside(logq, ref.ids) if lq_rest is None else lq_rest).double()
    log_r = (logq.gather(-1, ref.tail_ids.long()).double() - lq_rest.unsqueeze(-1)) \
        - (ref.tail_logp.double() - ref.rest.double().unsqueeze(-1))
    estimate = (torch.expm1(log_r) - log_r).mean(dim=-1)
    return torch.where(p_rest > 0, p_rest * estimate, torch.zeros_like(p_rest))


def stored_kl(ref: ReferenceSketch, logq: torch.Tensor) -> torch.Tensor:
    """The evaluator's per-position KL(P || Q): `coarse_kl` (exact on the top-k tokens and the mass outside
    them) plus `tail_kl` (sampled, unbiased), float64 [n]."""
    lq_rest = _outside(logq, ref.ids)
    return coarse_kl(ref, logq, lq_rest) + tail_kl(ref, logq, lq_rest)


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
    batch's logits are not finite. Runs `model` once per batch (under `evaluation`, entered and left within
    each batch: the caller's grad mode is never changed between yields, even if it stops early)."""
    device = model_device(model)
    for batch in batches:
        with evaluation(model):
            b = to_device(batch, device)
            logits = output_tensor(model(**b, **cache_kwargs(model)), "logits")
            mask = (b["attention_mask"][:, :-1] * b["attention_mask"][:, 1:]).bool()
            finite = bool(torch.isfinite(logits).all())
            rows = [((logits[row, :-1][mask[row]].to(torch.float32) if finite else None),
                     b["input_ids"][row, 1:][mask[row]]) for row in range(logits.shape[0])]
        yield from rows


def count_predicted(batches: Sequence[dict[str, torch.Tensor]]) -> int:
    """How many positions `predicted_rows` yields for `batches`."""
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
