"""Re-batch tokenized calibration batches into rows of bounded length, cycled in a seeded order.

Memory of a distillation step is bounded by (batch_size, max_length) whatever batches the caller made: every
row of every given batch is cut down to its attended tokens (attention_mask == 1, so left- or right-padded
input both work), truncated to `max_length`, and rows are regrouped `batch_size` at a time, right-padded with
0 under attention_mask 0 to the longest row of their group.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch

Batch = Mapping[str, torch.Tensor]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a tokenizer gives; labels etc. are dropped


def split_rows(batches: Sequence[Batch], max_length: int) -> list[dict[str, torch.Tensor]]:
    """One dict of 1-D tensors per text: the `MODEL_INPUTS` of each batch at the row's attended positions, at
    most `max_length` of them. Other entries are dropped. A batch without attention_mask counts every
    position; rows with no attended token are skipped.
    Raises ValueError when no row is left or the batches disagree on their keys."""
    rows: list[dict[str, torch.Tensor]] = []
    keys: tuple[str, ...] | None = None
    for batch in batches:
        ids = batch["input_ids"]
        mine = tuple(k for k in MODEL_INPUTS if torch.is_tensor(batch.get(k)) and batch[k].shape == ids.shape)
        if keys is None:
            keys = mine
        elif mine != keys:
            raise ValueError(f"calibration batches differ in their keys: {list(keys)} vs {list(mine)}")
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        for i in range(ids.shape[0]):
            where = mask[i].nonzero().flatten()[:max_length]
            if where.numel():
                rows.append({k: batch[k][i, where] for k in keys})
    if not rows:
        raise ValueError("no calibration text has a token to train on")
    return rows


def collate(rows: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad `rows` with 0 to the longest one; attention_mask is 1 on each row's tokens, 0 on padding."""
    width = max(len(r["input_ids"]) for r in rows)
    out = {}
    for key in rows[0]:
        t = rows[0][key]
        stacked = torch.zeros(len(rows), width, dtype=t.dtype, device=t.device)
        for i, r in enumerate(rows):
            stacked[i, :len(r[key])] = r[key]
        out[key] = stacked
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0]["input_ids"].device)
    for i, r in enumerate(rows):
        mask[i, :len(r["input_ids"])] = 1
    out["attention_mask"] = mask
    return out


def cycle_batches(rows: Sequence[Mapping[str, torch.Tensor]], batch_size: int, seed: int) -> Iterator[dict]:
    """Endless batches of `batch_size` rows: each pass over the rows is a fresh permutation drawn from a
    generator seeded with `seed` (the same seed gives the same sequence); a pass's last group may be smaller."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(rows), generator=gen).tolist()
        for start in range(0, len(order), batch_size):
            yield collate([rows[i] for i in order[start:start + batch_size]])
