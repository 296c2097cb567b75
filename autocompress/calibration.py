"""The calibration set of a search or of `autocompress apply`: texts sized in tokens, tokenized into batches.

Data-aware methods (GPTQ, Wanda, whitened SVD, activation-aware structured pruning) read the Gram matrix
X^T X / tokens of each layer's inputs. For a layer of `in` inputs it has rank at most the number of tokens, so
fewer tokens than inputs leave GPTQ a singular Hessian held up only by its damping (on SmolLM2-135M, 64
builtin sentences give about 1,150 tokens for down_proj's 1,536 inputs, and 3-bit GPTQ came out worse than RTN).
The calibration set must therefore hold at least `TOKENS_PER_INPUT` x the widest layer's inputs in unmasked
tokens. One token per input is the least for full rank; with two, the smallest eigenvalues of the sample Gram
are still about (1 - sqrt(1/2))^2 = 0.09 of the true ones (Marchenko-Pastur, for independent samples; the tokens
of one text are not independent), and the GPTQ paper (Frantar et al., 2022) calibrates with 128 x 2048 tokens, tens of times the width of the models it
quantizes. Measured on SmolLM2-135M (benchmarks/results/gptq_llm.md, 3-bit group-128 sequential GPTQ,
perplexity; float 93): 1,153 tokens 916, 3,095 tokens (2 per input) 452, 6,153 tokens (4 per input) 282. So the
floor is four per input; more texts (`data.calibration.n`) are always allowed.

`calibration_texts` takes the seeded sample of n texts (`load_texts(source, n, seed)`, unchanged) and, when it
is short of tokens, extends it deterministically with further texts of the same source (the rest of the source
in an order fixed by the seed) until the count is reached; a source too small for it raises `UserError`. The
evaluation texts are passed as `exclude`, so a plan is never calibrated on the texts it is scored on, even when
both sets come from one source.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from autocompress.errors import UserError

TOKENS_PER_INPUT = 4
DATA_AWARE_METHODS = frozenset({"gptq", "wanda", "whitened"})  # space method names that read calibration Grams


def resolve_sequential(setting: bool | None, task: str) -> bool:
    """`data.calibration.sequential`: as given, else (null) True for causal LMs and False otherwise."""
    return task == "causal-lm" if setting is None else bool(setting)


def space_is_data_aware(space: Any) -> bool:
    """Whether any section of a search space (config `space`) offers a method that reads calibration Grams."""
    for section in ("quantize", "prune", "structured", "lowrank"):
        sub = getattr(space, section, None)
        if sub is not None and DATA_AWARE_METHODS & set(getattr(sub, "method", ())):
            return True
    quantize = getattr(space, "quantize", None)  # weighted k-means reads the Grams' diagonals
    return quantize is not None and any(v != "none" for v in getattr(quantize, "kmeans_weighting", ()))


def min_tokens(in_features: Sequence[int]) -> int:
    """The unmasked tokens a calibration set needs for layers of these input widths (0 for none)."""
    return TOKENS_PER_INPUT * max(in_features, default=0)


def _token_counts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]


def calibration_texts(tokenizer: Any, source: str, n: int, seed: int, max_length: int, need: int,
                      field: str = "data.calibration.n", exclude: Sequence[str] = ()) -> list[str]:
    """`load_texts(source, n, seed)`, followed when its texts hold fewer than `need` tokens (each truncated
    to `max_length`) by more texts of `source`, in a seeded order, until they hold `need`. `UserError` naming
    `field` when the whole source holds fewer.

    A text in `exclude` (the evaluation texts) is never taken: it is dropped from the seeded sample, whose
    place the next texts of the seeded order take (so n texts are still taken when the source has them), and
    it is skipped in the extension. With no `exclude` the result is exactly the one described above."""
    from autocompress.data import load_texts

    pool = load_texts(source)
    banned = set(exclude)
    rng = random.Random(seed)
    picked = rng.sample(range(len(pool)), min(n, len(pool)))  # the indices load_texts(source, n, seed) takes
    chosen = set(picked)
    rest = [i for i in range(len(pool)) if i not in chosen]
    rng.shuffle(rest)  # after the sample, so the sample is load_texts' own
    order = [i for i in picked + rest if pool[i] not in banned]
    texts = [pool[i] for i in order[:n]]
    if not texts:
        raise UserError(f"{field}: all {len(pool)} texts of {source!r} are evaluation texts, and calibration never "
                        "takes those; give a calibration source with texts apart from the evaluation's")
    have = sum(_token_counts(tokenizer, texts, max_length))
    if have >= need:
        return texts
    rest = order[n:]
    for start in range(0, len(rest), 64):
        chunk = [pool[i] for i in rest[start:start + 64]]
        for text, count in zip(chunk, _token_counts(tokenizer, chunk, max_length)):
            texts.append(text)
            have += count
            if have >= need:
                return texts
    apart = f" outside the {len(banned)} evaluation texts" if banned else ""
    raise UserError(f"{field}: data-aware methods need at least {need} calibration tokens ({TOKENS_PER_INPUT} per "
                    f"input of the widest layer), and all {len(order)} texts of {source!r}{apart} give only {have} "
                    f"at max_length {max_length}; give a larger calibration source")


def search_calibration(config: Any, tokenizer: Any, info: Any, base_model: Any, device: Any,
                       exclude: Sequence[str] = ()) -> Any:
    """The `Calibration` of a search worker: `data.calibration` texts (none of `exclude`, the evaluation
    texts) sized for the model's widest layer when the space offers a data-aware method, tokenized (batches
    of at most 16, `data.max_length`) on `device`, with a memo of `base_model` and `data.calibration.sequential` resolved for the task."""
    from autocompress.data import make_batches
    from autocompress.evaluators._base import to_device
    from autocompress.policies import Calibration
    from autocompress.policies.memo import BaseModelMemo

    d = config.data
    need = min_tokens([li.in_features for li in info.layers.values()]) if space_is_data_aware(config.space) else 0
    texts = calibration_texts(tokenizer, d.calibration.source, d.calibration.n, d.calibration.seed, d.max_length,
                              need, exclude=exclude)
    batches = [to_device(b, device) for b in
               make_batches(tokenizer, texts, batch_size=min(d.batch_size, 16), max_length=d.max_length)]
    return Calibration(batches, memo=BaseModelMemo(base_model),
                       sequential=resolve_sequential(d.calibration.sequential, info.task))
