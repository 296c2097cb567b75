"""Row batching of calibration data: bounded rows, padding-agnostic, seeded cycling."""

from __future__ import annotations

import pytest
import torch

from autocompress.distill.batching import collate, cycle_batches, split_rows


def test_rows_keep_attended_tokens_only_and_truncate():
    ids = torch.tensor([[5, 6, 7, 0], [0, 0, 8, 9]])  # right- and left-padded rows
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])
    rows = split_rows([{"input_ids": ids, "attention_mask": mask, "labels": ids}], max_length=2)
    assert [r["input_ids"].tolist() for r in rows] == [[5, 6], [8, 9]]
    assert set(rows[0]) == {"input_ids", "attention_mask"}  # labels dropped
    batch = collate([rows[0], {"input_ids": torch.tensor([4]), "attention_mask": torch.tensor([1])}])
    assert batch["input_ids"].tolist() == [[5, 6], [4, 0]] and batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError, match="no calibration text"):
        split_rows([{"input_ids": ids, "attention_mask": torch.zeros_like(mask)}], 4)


def test_cycling_is_seeded_and_covers_every_row():
    rows = [{"input_ids": torch.tensor([i + 1] * (i % 3 + 1))} for i in range(5)]

    def firsts(seed, n):
        stream = cycle_batches(rows, 2, seed)
        return [next(stream)["input_ids"][:, 0].tolist() for _ in range(n)]

    assert firsts(0, 6) == firsts(0, 6) and firsts(0, 6) != firsts(1, 6)
    one_pass = sum(firsts(3, 3), [])
    assert sorted(one_pass) == [1, 2, 3, 4, 5]  # a pass is a permutation; its last group is smaller
