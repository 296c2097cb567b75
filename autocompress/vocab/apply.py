"""`prune_vocab`: apply a plan's `vocab` entry to a model (before every weight policy: `apply_plan`).

The kept ids: the plan's `keep_ids` (plus a fallback id), or, for a share `keep`, `resolve_keep_ids` over the
calibration batches' token counts, with the tokenizer's special tokens and a fallback id always kept. The
fallback (where a dropped id goes): the plan's `fallback` (an id, or "mean"); else, for a share, the tokenizer's
unknown token when it is a dedicated one (its text holds "unk": BERT's "[UNK]", Llama's "<unk>"); else "mean":
one extra row, the mean of the dropped rows, in the table and in an untied head (a tied head shares it). A share
then keeps one id fewer, so the rows are `kept_count` either way. Not "<|endoftext|>" (SmolLM2's and GPT-2's
unknown token): read mid-text it is a document boundary, and on SmolLM2-135M mapping 1.3% of held-out tokens to
it cost 0.76 nats of KL at keep 0.5, the mean row 0.50 (benchmarks/results/vocab_pruning_smollm2.md). The
special tokens and the unk come from the tokenizer the model was loaded with (`remember_tokenizer`, which
`loading.load_model` calls), else from the model config's bos/eos/pad/unk ids.

The token table becomes `nn.Embedding(n, dim)` of the kept rows (in id order, then the mean row), the LM head
(a causal LM's) `nn.Linear(dim, n)` of the same rows (one shared weight when they were tied), and both get the run-time id map
of `vocab/runtime.py`: the model still takes and gives the original ids. `model.config` is unchanged
(vocab_size stays the original's: the logits are over the original ids).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.models import ModelInfo
from autocompress.modules import set_module
from autocompress.vocab.frequency import resolve_keep_ids, token_counts
from autocompress.vocab.plan import VocabPlan, lm_head, token_table, vocab_size
from autocompress.vocab.runtime import attach_head, attach_table, build_id_map

TOKENS_ATTR = "_autocompress_vocab_tokens"
_CONFIG_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id", "cls_token_id",
               "mask_token_id", "decoder_start_token_id")


def remember_tokenizer(model: nn.Module, tokenizer: Any) -> None:
    """Keep on `model` (the attribute `_autocompress_vocab_tokens`) the tokenizer's special token ids, which
    vocabulary pruning always keeps, and its unknown token's id when that is a dedicated one (module
    docstring). No-op without a tokenizer."""
    if tokenizer is None:
        return
    specials = sorted({int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []) if i is not None})
    unk = getattr(tokenizer, "unk_token_id", None)
    dedicated = unk is not None and "unk" in str(getattr(tokenizer, "unk_token", "")).lower()
    tokens = {"specials": specials, "unk": unk if dedicated else None}
    object.__setattr__(model, TOKENS_ATTR, tokens)


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def special_tokens(model: nn.Module) -> tuple[list[int], int | None]:
    """(the ids pruning always keeps, the dedicated unknown token's id or None) for `model` (module docstring)."""
    tokens = vars(model).get(TOKENS_ATTR)
    config = getattr(model, "config", None)
    if tokens is None:
        cfg = {k: _ids(getattr(config, k, None)) for k in _CONFIG_IDS}
        tokens = {"specials": sorted({i for v in cfg.values() for i in v}), "unk": (cfg["unk_token_id"] or [None])[0]}
    return list(tokens["specials"]), tokens.get("unk")


def resolve_plan_ids(model: nn.Module, plan: VocabPlan, size: int,
                     batches: Sequence[Mapping[str, torch.Tensor]] | None) -> tuple[list[int], int | None]:
    """(the sorted kept ids, the fallback id or None for the mean row) of `plan` on `model` (module docstring).
    `UserError` when a share is asked for without calibration batches to count tokens in."""
    specials, unk = special_tokens(model)
    if isinstance(plan.fallback, int):
        fallback = plan.fallback
    else:
        fallback = unk if plan.fallback is None and plan.keep_ids is None else None
    if fallback is not None and fallback >= size:
        raise UserError(f"vocab.fallback: id {fallback} is out of range; this model's vocabulary has {size} ids")
    must = [*specials] + ([fallback] if fallback is not None else [])
    if plan.keep_ids is not None:
        return sorted(set(plan.keep_ids) | set(must[len(specials):])), fallback
    if not batches:
        raise UserError(f"vocab.keep={plan.keep:g} ranks tokens by their frequency in the calibration data; pass "
                        "calibration batches (the config's data.calibration), or give vocab.keep_ids")
    counts = token_counts(batches, size)
    return resolve_keep_ids(plan.keep, counts, must, reserve=0 if fallback is not None else 1), fallback


@torch.no_grad()
def prune_vocab(model: nn.Module, plan: VocabPlan, info: ModelInfo,
                batches: Sequence[Mapping[str, torch.Tensor]] | None = None) -> torch.Tensor:
    """Prune `model`'s token table and LM head in place to the ids `plan` keeps (module docstring); returns the
    id map (int32 [vocab_size]). `info` is the original model's inventory."""
    size, table_name, head_name = vocab_size(info), token_table(info), lm_head(info)
    table = model.get_submodule(table_name)
    if type(table) is not nn.Embedding:
        raise UserError(f"vocab: the token table {table_name!r} is a {type(table).__name__}, not a plain "
                        "nn.Embedding; vocabulary pruning supports plain tables only")
    keep, fallback = resolve_plan_ids(model, plan, size, batches)
    id_map = build_id_map(keep, fallback, size)
    rows = torch.as_tensor(keep, dtype=torch.long, device=table.weight.device)
    dropped = torch.ones(size, dtype=torch.bool, device=rows.device)
    dropped[rows] = False

    def pick(t: torch.Tensor) -> torch.Tensor:  # the kept rows, then the mean of the dropped ones if no fallback id
        return t[rows].clone() if fallback is not None else torch.cat([t[rows], t[dropped].mean(0, keepdim=True)])

    head = model.get_submodule(head_name) if head_name is not None else None
    tied = head is not None and getattr(head, "weight", None) is table.weight
    pad = table.padding_idx
    weight = pick(table.weight)
    new_table = nn.Embedding(weight.shape[0], table.embedding_dim, device=weight.device, dtype=weight.dtype,
                             padding_idx=int(id_map[pad]) if pad is not None and pad in set(keep) else None)
    new_table.weight = nn.Parameter(weight, requires_grad=table.weight.requires_grad)
    attach_table(new_table, id_map)
    set_module(model, table_name, new_table)
    if head is not None:
        if type(head) is not nn.Linear:
            raise UserError(f"vocab: the LM head {head_name!r} is a {type(head).__name__}, not an nn.Linear; "
                            "vocabulary pruning supports Linear heads only")
        new_head = nn.Linear(head.in_features, weight.shape[0], bias=head.bias is not None,
                             device=head.weight.device, dtype=head.weight.dtype)
        new_head.weight = new_table.weight if tied else nn.Parameter(pick(head.weight))
        if head.bias is not None:
            new_head.bias = nn.Parameter(pick(head.bias))
        attach_head(new_head, id_map)
        set_module(model, head_name, new_head)
    return id_map
