"""Vocabulary pruning: keep only the token ids a domain uses, in the input token table and the LM head.

`VocabPlan` (plan.py) is plain data that `autocompress.plan` imports, with `check_vocab`, `vocab_rows` and
`id_map_bytes` (what validation and the size model read); the rest is imported from its module:
  - `token_counts`, `resolve_keep_ids` (frequency.py): the kept ids from a share and the calibration corpus
  - `build_id_map`, `attach_table`, `attach_head` (runtime.py): the id map in front of the pruned table, the
    head's logits mapped back to the original ids
  - `prune_vocab`, `remember_tokenizer` (apply.py): apply a plan's entry to a model
  - `logit_map_elements`, `data_free` (latency.py): what the latency models count and time
  - export.py: the packed export's id map, the loader's restore, what the other formats say
"""

from __future__ import annotations

from autocompress.vocab.plan import VocabPlan, kept_count

__all__ = ["VocabPlan", "kept_count"]
