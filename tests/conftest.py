"""Shared fixtures: tiny random models are cheap; the real MiniLM is loaded once per session."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def minilm():
    from autocompress.loading import load_model

    return load_model("all-MiniLM-L6-v2")


@pytest.fixture
def calibration_batches():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(100, 1000, (4, 16), generator=g),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(2)]
