"""Which ids a share of the vocabulary keeps: token frequencies on the calibration corpus.

`token_counts` counts the unmasked input ids of tokenized batches (the calibration set of a search or of
`autocompress apply`). `resolve_keep_ids` turns a share into ids: the ids that must stay (the tokenizer's
special tokens and the fallback) first, then the others by count, most frequent first, ties (ids the corpus
never uses among them) by the lower id, exactly `kept_count(keep, vocab_size)` ids, returned sorted. The same
batches and share always give the same ids, so a search's trial, its export and `autocompress apply` agree.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from autocompress.errors import UserError
from autocompress.vocab.plan import kept_count


def token_counts(batches: Iterable[Mapping[str, torch.Tensor]], vocab_size: int) -> torch.Tensor:
    """int64 [vocab_size]: how often each id occurs among the unmasked `input_ids` of `batches` (ids at or
    beyond `vocab_size` are not counted)."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for batch in batches:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        ids = ids[mask.bool()] if mask is not None else ids.reshape(-1)
        ids = ids[(ids >= 0) & (ids < vocab_size)].cpu().long()
        counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def resolve_keep_ids(keep: float, counts: torch.Tensor, always: Iterable[int], reserve: int = 0) -> list[int]:
    """The sorted ids a share `keep` of the vocabulary (`counts`' length) keeps (module docstring), `reserve`
    rows fewer (the mean row of a plan without a fallback id). `UserError` when the ids that must stay outnumber
    the share's rows."""
    size = int(counts.numel())
    n = kept_count(keep, size) - reserve
    must = sorted({int(i) for i in always if 0 <= int(i) < size})
    if len(must) > n:
        raise UserError(f"vocab.keep={keep:g} keeps {n} ids, fewer than the {len(must)} special and fallback "
                        f"tokens that always stay; raise vocab.keep to at least {len(must) / size:.4f}")
    # stable sort by descending count: equal counts stay in id order
    order = torch.sort(-counts, stable=True).indices.tolist()
    chosen = set(must)
    for i in order:
        if len(chosen) >= n:
            break
        chosen.add(i)
    return sorted(chosen)


def coverage(counts: torch.Tensor, keep_ids: Iterable[int]) -> float:
    """Share of the counted tokens whose id is kept (1.0 when nothing was counted)."""
    total = int(counts.sum())
    if total == 0:
        return 1.0
    ids = torch.as_tensor(sorted(set(keep_ids)), dtype=torch.long)
    return float(counts[ids].sum()) / total
