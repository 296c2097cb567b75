"""Kept ids from a share: the always-kept ids first, then by calibration frequency, ties by the lower id."""

from __future__ import annotations

import pytest
import torch

from autocompress.errors import UserError
from autocompress.vocab.frequency import coverage, resolve_keep_ids, token_counts


def test_counts_skip_padding():
    batch = {"input_ids": torch.tensor([[3, 3, 5, 0], [7, 3, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    counts = token_counts([batch], 10)
    assert counts.tolist() == [0, 0, 0, 3, 0, 1, 0, 1, 0, 0]


def test_resolve_keeps_specials_then_frequent_then_low_ids():
    counts = torch.tensor([0, 0, 0, 3, 0, 1, 0, 9, 0, 0])
    assert resolve_keep_ids(0.4, counts, [9]) == [3, 5, 7, 9]  # 9 always, then 7 (9x), 3 (3x), 5 (1x)
    assert resolve_keep_ids(0.6, counts, [9]) == [0, 1, 3, 5, 7, 9]  # then the unused ids by id
    assert len(resolve_keep_ids(1.0, counts, [])) == 10


def test_too_few_rows_for_the_specials_is_a_user_error():
    with pytest.raises(UserError, match="vocab.keep=0.1 keeps 1 ids, fewer than the 2 special"):
        resolve_keep_ids(0.1, torch.zeros(10, dtype=torch.long), [0, 1])


def test_coverage():
    counts = torch.tensor([0, 4, 1, 5])
    assert coverage(counts, [1, 3]) == pytest.approx(0.9)
    assert coverage(torch.zeros(3, dtype=torch.long), [0]) == 1.0
