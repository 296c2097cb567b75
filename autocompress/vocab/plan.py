"""`VocabPlan`: which token ids a pruned vocabulary keeps, as immutable, JSON-exact plan data.

A plan-level entry (`CompressionPlan.vocab`, JSON key "vocab"), not a layer entry: it removes rows from the
input token table and from the LM head together (tied or not). Two ways to say which rows stay:

  - `keep`: the share of the vocabulary kept, in (0, 1]; the kept ids are resolved when the plan is applied
    (`autocompress.vocab.frequency.resolve_keep_ids`): the tokenizer's special tokens and the fallback first,
    then the ids most frequent in the calibration corpus (ties by the lower id), exactly
    `kept_count(keep, vocab_size)` = max(1, round(keep x vocab_size)) ids. This is what a search draws
    (`space.vocab`); `keep: 1.0` is no plan;
  - `keep_ids`: the kept ids themselves (held sorted and unique), e.g. from a domain's own token list.

`fallback` (optional): where every dropped id goes. An id: that token (always kept). "mean": one extra row,
the mean of the dropped rows (of the table, and of an untied head), which stands for every dropped token.
Default: a share plan uses the tokenizer's own unknown token when it has a dedicated one ("[UNK]", "<unk>"),
else "mean"; an id-list plan uses "mean". Not a special token such as "<|endoftext|>", which SmolLM2's and
GPT-2's tokenizers name as their unknown token: a decoder reading it mid-text takes it for a document boundary
and loses the context (vocab/apply.py).

A plan whose `keep` is 1.0 and that names no ids is no plan: `CompressionPlan` drops it. This module is plain
data (no torch), so `autocompress.plan` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autocompress.errors import UserError, from_fields

_FIELDS = ("keep", "keep_ids", "fallback")
MEAN = "mean"
ID_MAP_BYTES = 4  # the id map is int32: one entry per original id


def kept_count(keep: float, vocab_size: int) -> int:
    """Rows a vocabulary of `vocab_size` keeps at share `keep`: max(1, round(keep x vocab_size))."""
    return min(vocab_size, max(1, round(keep * vocab_size)))


def _check_id(value: Any, field: str) -> int:
    if type(value) is not int or value < 0:
        raise UserError(f"{field}={value!r} must be a token id (an integer >= 0)")
    return value


@dataclass(frozen=True)
class VocabPlan:
    """Module docstring. Raises `UserError` (one line naming the field) for a `keep` outside (0, 1], both or
    neither of `keep` < 1 and `keep_ids`, an empty `keep_ids`, or an id that is not an integer >= 0."""

    keep: float = 1.0
    keep_ids: Any = None
    fallback: int | str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not 0 < self.keep <= 1:
            raise UserError(f"vocab.keep={self.keep!r} must be a share of the vocabulary in (0, 1], e.g. 0.5; "
                            "1.0 keeps every token")
        object.__setattr__(self, "keep", float(self.keep))
        if self.keep_ids is not None:
            if self.keep != 1.0:
                raise UserError("vocab: give either keep (a share) or keep_ids (the ids), not both")
            if isinstance(self.keep_ids, (str, bytes, Mapping)) or not hasattr(self.keep_ids, "__iter__"):
                raise UserError(f"vocab.keep_ids must be a list of token ids, got {type(self.keep_ids).__name__}")
            ids = tuple(sorted({_check_id(i, "vocab.keep_ids") for i in self.keep_ids}))
            if not ids:
                raise UserError("vocab.keep_ids is empty; list the token ids to keep, or use keep (a share)")
            object.__setattr__(self, "keep_ids", ids)
        if self.fallback is not None and self.fallback != MEAN:
            if isinstance(self.fallback, str):
                raise UserError(f"vocab.fallback={self.fallback!r} must be a token id or \"mean\" (a row averaging "
                                "the dropped ones)")
            _check_id(self.fallback, "vocab.fallback")

    @property
    def is_noop(self) -> bool:
        """True when every token is kept (keep 1.0 and no id list)."""
        return self.keep_ids is None and self.keep >= 1.0

    def rows(self, vocab_size: int) -> int:
        """How many rows the pruned table and head hold for a vocabulary of `vocab_size` ids: a share's
        `kept_count` (the mean row, if any, among them); an id list's ids plus the fallback id, or plus the mean
        row (an id list without a fallback id)."""
        if self.keep_ids is None:
            return kept_count(self.keep, vocab_size)
        if isinstance(self.fallback, int):
            return len(set(self.keep_ids) | {self.fallback})
        return len(self.keep_ids) + 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.keep_ids is not None:
            out["keep_ids"] = list(self.keep_ids)
        else:
            out["keep"] = self.keep
        if self.fallback is not None:
            out["fallback"] = self.fallback
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> "VocabPlan":
        """The entry read from JSON; a `UserError` is prefixed with `where` (the plan's file or name)."""
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: vocab must be an object with keep (a share in (0, 1]) or keep_ids, and "
                            "optionally fallback")
        return from_fields(cls, data, _FIELDS, where, name="vocab")

    def flatten(self) -> dict[str, Any]:
        """MLflow parameters: {"vocab.keep": share} (or {"vocab.keep_ids": how many ids}), and the fallback."""
        flat: dict[str, Any] = ({"vocab.keep": self.keep} if self.keep_ids is None
                                else {"vocab.keep_ids": len(self.keep_ids)})
        if self.fallback is not None:
            flat["vocab.fallback"] = self.fallback
        return flat

    def summary(self) -> str:
        """e.g. "vocab 50%" or "vocab 1,234 ids"."""
        if self.keep_ids is None:
            return f"vocab {self.keep:.0%}" if round(self.keep * 100) == self.keep * 100 else f"vocab {self.keep:g}"
        return f"vocab {len(self.keep_ids):,} ids"


def vocab_size(info: Any) -> int:
    """The vocabulary size of the model of `info` (a `ModelInfo`): its config's vocab_size, else the rows of
    its first embedding table; 0 when it has neither."""
    size = info.extra.get("vocab_size")
    if size:
        return int(size)
    return next((e.num_embeddings for e in info.embeddings.values()), 0)


def token_table(info: Any) -> str | None:
    """The name of the input token table: the embedding with vocab_size rows (the first, in model order)."""
    size = vocab_size(info)
    return next((n for n, e in info.embeddings.items() if e.num_embeddings == size), None)


def lm_head(info: Any) -> str | None:
    """The name of the LM head: a Linear outside the blocks with vocab_size outputs (a causal LM's), or None."""
    size = vocab_size(info)
    if info.task != "causal-lm":
        return None
    return next((n for n, li in info.layers.items() if li.block is None and li.out_features == size), None)


def check_vocab(plan: VocabPlan, info: Any, layers: Mapping[str, Any] | None = None) -> None:
    """Raise `UserError` (one line, naming the field and the fix) if `plan` cannot apply to the model of `info`:
    no token table, an id (or the fallback) out of range, or a head or table that another plan entry factorizes
    (`layers`: the plan's layer entries; the pruned rows and a low-rank pair do not compose)."""
    size, table = vocab_size(info), token_table(info)
    if not size or table is None:
        raise UserError(f"vocab: this {info.model_type} model has no token embedding table; drop vocab from the "
                        "plan (or space.vocab from the config)")
    for i in (*(plan.keep_ids or ()), *((plan.fallback,) if isinstance(plan.fallback, int) else ())):
        if i >= size:
            field = "vocab.fallback" if i == plan.fallback else "vocab.keep_ids"
            raise UserError(f"{field}: id {i} is out of range; this model's vocabulary has {size} ids "
                            f"(0..{size - 1})")
    for name in (table, lm_head(info)):
        entry = (layers or {}).get(name) if name is not None else None
        if entry is not None and getattr(entry, "rank", None) is not None:
            raise UserError(f"plan layer {name!r}: low rank and vocab pruning of the same table do not compose; "
                            "drop its rank, or drop vocab")


def vocab_rows(plan: Any, info: Any) -> dict[str, int]:
    """{token table: kept rows, LM head: kept rows} under the `CompressionPlan` `plan` ({} without a vocab
    entry): what the size, memory and latency models count instead of vocab_size rows."""
    if getattr(plan, "vocab", None) is None:
        return {}
    rows = plan.vocab.rows(vocab_size(info))
    return {name: rows for name in (token_table(info), lm_head(info)) if name is not None}


def id_map_bytes(plan: Any, info: Any) -> int:
    """Bytes of the stored id map (int32 per original id) under `plan`; 0 without a vocab entry."""
    return ID_MAP_BYTES * vocab_size(info) if getattr(plan, "vocab", None) is not None else 0


def vocab_summary(info: Any) -> dict[str, Any] | None:
    """What `autocompress inspect` shows of the vocabulary: {"size", "table", "head", "tied", "params", "share"}
    (the parameters of the token table and the LM head, counted once when tied, and their share of the model's),
    or None for a model without a token table."""
    size, table = vocab_size(info), token_table(info)
    if not size or table is None:
        return None
    head = lm_head(info)
    emb = info.embeddings[table]
    params = emb.params + (info.layers[head].params if head is not None and emb.tied_to != head else 0)
    return {"size": size, "table": table, "head": head, "tied": head is not None and emb.tied_to == head,
            "params": params, "share": params / info.total_params if info.total_params else 0.0}
