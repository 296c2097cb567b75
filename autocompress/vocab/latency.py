"""What the latency models count for a pruned vocabulary (`evaluators/latency/_base.py` plan_ops).

The LM head is a GEMM of the kept rows only (`vocab_rows`), and its logits are then mapped back to the original
ids (vocab/runtime.py: one gather and one subtraction over vocab_size values per position that reaches the
head): an element-wise operator of 2 x positions x vocab_size values, 2 launches. The id map in front of the
token table is a lookup per token, counted with the embeddings. An encoder has no head: nothing but the table
changes, and a table lookup costs the same whatever its rows.
"""

from __future__ import annotations

from typing import Any

from autocompress.vocab.plan import lm_head, vocab_rows, vocab_size

__all__ = ["logit_map_elements", "vocab_rows"]
MAP_KERNELS = 2


def logit_map_elements(plan: Any, info: Any, workload: Any) -> float:
    """Values the logit map reads and writes in one call of `workload` (0 without a pruned head): positions at
    the head (the batch in a causal LM's prefill, which needs the last logits only; else every token) x 2 x
    vocab_size."""
    if getattr(plan, "vocab", None) is None or lm_head(info) is None:
        return 0.0
    positions = workload.batch if workload.mode == "prefill" else workload.tokens
    return 2.0 * positions * vocab_size(info)


def data_free(vocab: Any, size: int) -> Any:
    """A `VocabPlan` of the same rows as `vocab` for a vocabulary of `size` ids that needs no calibration data
    (the first ids, then the mean row): what the `measured` latency model times. None for None."""
    from autocompress.vocab.plan import VocabPlan

    if vocab is None:
        return None
    rows = vocab.rows(size)
    return VocabPlan(keep_ids=[0], fallback=0) if rows < 2 else VocabPlan(keep_ids=list(range(rows - 1)))
