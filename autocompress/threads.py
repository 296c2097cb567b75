"""torch's intra-op thread count for a stretch of work: a trial, an export's rebuild."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def trial_threads(cpus_per_trial: float) -> int:
    """The torch threads a trial runs with: `backend.cpus_per_trial`, rounded down, at least 1."""
    return max(1, int(cpus_per_trial))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block (None: left as it is), restored after."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
