"""Vocabulary pruning: keep only the token ids a domain uses, in the input token table and the LM head.

`VocabPlan` (plan.py) is plain data that `autocompress.plan` imports; the rest needs torch and is imported from
its module:
  - `token_counts`, `resolve_keep_ids` (frequency.py): the kept ids from a share and the calibration corpus
  - `VocabEmbedding`, `VocabHead` (modules.py): the pruned table behind an id map, the head over the kept rows
  - `prune_vocab`, `remember_tokenizer` (apply.py): apply a plan's entry to a model
  - `vocab_bytes` (size.py): what the size and latency models count
  - export.py: the packed export's id map, the loader's restore, what the other formats say
"""

from __future__ import annotations

from autocompress.vocab.plan import VocabPlan, kept_count

__all__ = ["VocabPlan", "kept_count"]
