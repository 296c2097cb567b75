"""The parts of the search config that describe what is searched: the `space` sections (one per technique,
plus `space.distill`), with the metric names they and the rest of the config check against. `autocompress.config` re-exports every name here; import from there.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autocompress.errors import UserError, echo

# metrics a trial can report, and whether the plan alone decides them (no model work needed)
METRICS = {
    "fidelity": "max", "fidelity_min": "max", "topk_agreement": "max",
    "perplexity": "min", "perplexity_ratio": "min", "nll": "min", "accuracy": "max",
    "kl": "min", "kl_p99": "min", "top1_agreement": "max",
    "size_mb": "min", "size_ratio": "min", "latency_ms": "min", "memory_mb": "min", "size_coded_mb": "min",
}
# plus latency_ms when the latency model is not `measured`; memory_mb needs a target (batch, seq_len, dtype);
# size_coded_mb (the packed tensors zstd-coded, export/entropy.py) is measured on the
# compressed model by the worker, for every task
PLAN_METRICS = frozenset({"size_mb", "size_ratio", "memory_mb"})
TASK_METRICS = {
    "embedding": {"fidelity", "fidelity_min", "topk_agreement"},
    "causal-lm": {"perplexity", "perplexity_ratio", "nll", "kl", "kl_p99", "top1_agreement"},
    "sequence-classification": {"accuracy"},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        close = difflib.get_close_matches(metric, list(METRICS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown metric {echo(metric)}{hint} (known: {', '.join(METRICS)})")


class _Selectable(_Strict):
    targets: list[str] | None = None
    ignore: list[str] = []


GroupSizes = list[int | None] | dict[int, list[int | None]]


class _GroupedBits(_Selectable):
    """Shared by the weight-quantizing sections: `group_size` is either one list of choices for every bit
    width, or a mapping bit width -> its own choices (`{8: [null], 4: [64]}`: 8-bit weights one scale per
    output channel, which the int8 kernels take, 4-bit ones in groups of 64, which the int4 kernel takes).
    In the mapping form each width's choice is its own Optuna param, `<unit>.group_size_<b>bit` (a param's
    choices never change between trials); a width with one choice is a constant and draws nothing."""

    @model_validator(mode="after")
    def _groups_per_bits(self):
        if isinstance(self.group_size, dict):
            wanted = {b for b in self.bits if b is not None}
            missing, extra = sorted(wanted - set(self.group_size)), sorted(set(self.group_size) - wanted)
            if missing:
                raise ValueError(f"group_size has no choices for bits {missing}; add e.g. `{missing[0]}: [128]` "
                                 "(a mapping names every bit width of `bits`)")
            if extra:
                raise ValueError(f"group_size names bits {extra} that are not among bits {self.bits}")
            empty = [b for b, choices in self.group_size.items() if not choices]
            if empty:
                raise ValueError(f"group_size for bits {empty[0]} is empty; give at least one choice (null: one "
                                 "scale per output channel)")
        return self

    def group_sizes(self, bits: int) -> list[int | None]:
        """The group-size choices for weights of `bits` bits."""
        return self.group_size[bits] if isinstance(self.group_size, dict) else self.group_size

    def group_field(self, bits: int) -> str:
        """The field name the choice among `group_sizes(bits)` is drawn under (the param is `<unit>.<field>`)."""
        return f"group_size_{bits}bit" if isinstance(self.group_size, dict) else "group_size"

    def all_group_sizes(self) -> list[int | None]:
        """Every group size any bit width may take (for checks that do not depend on the width)."""
        if not isinstance(self.group_size, dict):
            return list(self.group_size)
        return list(dict.fromkeys(g for choices in self.group_size.values() for g in choices))


class QuantizeSpace(_GroupedBits):
    bits: list[Literal[2, 3, 4, 5, 6, 7, 8] | None] = Field([4, 8, None], min_length=1)
    group_size: GroupSizes = Field([128], min_length=1)
    symmetric: list[bool] = Field([True], min_length=1)
    method: list[Literal["rtn", "gptq", "kmeans"]] = Field(["rtn"], min_length=1)
    act_bits: list[Literal[8] | None] = Field([None], min_length=1)
    smooth: list[float | None] = Field([None], min_length=1, description="SmoothQuant migration strengths in "
                                       "(0, 1], null for none; drawn only for units with act_bits 8")
    kmeans_weighting: list[Literal["none", "activation"]] = Field(
        ["none"], min_length=1, description="k-means weightings (policies/kmeans_weighted.py); drawn only for units "
        "whose quant_method is kmeans")

    @model_validator(mode="after")
    def _weighting_needs_kmeans(self):
        if any(v != "none" for v in self.kmeans_weighting) and "kmeans" not in self.method:
            raise ValueError(f"kmeans_weighting {self.kmeans_weighting} weights k-means codebooks, and method "
                             f"{self.method} offers no kmeans; add kmeans to method or drop kmeans_weighting")
        return self

    @field_validator("smooth")
    @classmethod
    def _alpha(cls, v: list[float | None]) -> list[float | None]:
        if any(a is not None and not 0.0 < a <= 1.0 for a in v):
            raise ValueError("each smooth must be a migration strength in (0, 1] (0.5 is SmoothQuant's default), "
                             "or null for no smoothing")
        return v


class EmbeddingSpace(_GroupedBits):
    """Weight quantization of the embedding tables (RTN; groups run along each token's vector). Every
    selected table is a decision unit of its own (named by the table), whatever `space.share` says; a table
    tied to a Linear (the LM head) is selected too and its plan entry goes on that Linear."""

    bits: list[Literal[2, 3, 4, 5, 6, 7, 8] | None] = Field([8, 4, None], min_length=1)
    group_size: GroupSizes = Field([128], min_length=1)
    symmetric: list[bool] = Field([True], min_length=1)


class PruneSpace(_Selectable):
    sparsity: list[float] = Field([0.0, 0.25, 0.5], min_length=1)
    pattern: list[str] = Field(["unstructured"], min_length=1)
    method: list[Literal["magnitude", "wanda"]] = Field(["wanda"], min_length=1)

    @field_validator("sparsity")
    @classmethod
    def _range(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= s <= 0.95 for s in v):
            raise ValueError("each sparsity must be within 0..0.95")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if p != "unstructured" and not re.match(r"^\d+:\d+$", p)]
        if bad:
            raise ValueError(f"pattern {bad[0]!r} is unknown; use unstructured or N:M such as 2:4")
        return v


class StructuredSpace(_Selectable):
    sparsity: list[float] = Field([0.0, 0.125, 0.25], min_length=1)
    method: list[Literal["magnitude", "wanda"]] = Field(["wanda"], min_length=1)

    _range = field_validator("sparsity")(PruneSpace._range.__func__)


class LowRankSpace(_Selectable):
    rank: list[int | float | None] = Field([None, 0.5, 0.25], min_length=1)
    method: list[Literal["svd", "whitened"]] = Field(["whitened"], min_length=1)


class KVCacheSpace(_Strict):
    """KV-cache quantization of a causal LM (`autocompress.kvcache`; spaces/kv_cache.py). `bits` are the
    choices (16 = not quantized), drawn once for the whole cache (param `kv_cache.bits`) or, with
    `per_block: true`, once per block (`kv_cache.block<i>.bits`); group_size and symmetric are drawn once,
    only when some block is quantized. The uniform baselines get one plan per bits choice below 16."""

    bits: list[Literal[16, 8, 4, 2]] = Field([16, 8, 4], min_length=1)
    group_size: list[int | None] = Field([32], min_length=1)
    symmetric: list[bool] = Field([False], min_length=1)
    per_block: bool = False

    @field_validator("group_size")
    @classmethod
    def _groups(cls, v: list[int | None]) -> list[int | None]:
        if any(g is not None and g < 1 for g in v):
            raise ValueError("each group_size must be a positive integer (channels of one head per scale), or "
                             "null for one scale per head and token")
        return v


class VocabSpace(_Strict):
    """Vocabulary pruning (`autocompress.vocab`; spaces/vocab.py): `keep` are the choices of the share of the
    vocabulary kept (param `vocab.keep`; 1.0 keeps every token), the kept ids ranked by their frequency in the
    calibration data, the tokenizer's special tokens always kept. The uniform baselines get one plan per share
    below 1."""

    keep: list[float] = Field([1.0, 0.5, 0.25], min_length=1)

    @field_validator("keep")
    @classmethod
    def _shares(cls, v: list[float]) -> list[float]:
        if any(isinstance(k, bool) or not 0.0 < k <= 1.0 for k in v):
            raise ValueError("each keep must be a share of the vocabulary in (0, 1], e.g. 0.5; 1.0 keeps every "
                             "token")
        return v


class DepthSpace(_Strict):
    """Depth pruning: whole transformer blocks dropped (`autocompress.depth`; spaces/depth.py). mode
    "influence" (default): one decision `depth.drop`, how many blocks go (0..max_drop), taken in `order` (least
    important first; null: ShortGPT's Block Influence on data.calibration, computed once per run and written here
    in the run's config.yaml). mode "switches": one boolean per block (`depth.block<i>.drop`), at most max_drop
    of them kept true (beyond that, the first max_drop in `order`, or by index). Uniform baselines drop none."""

    max_drop: int = Field(4, ge=1)
    mode: Literal["influence", "switches"] = "influence"
    order: list[int] | None = None

    @field_validator("order")
    @classmethod
    def _order(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(set(v)) != len(v) or any(b < 0 for b in v)):
            raise ValueError("order must list distinct block indices >= 0, least important first")
        return v


class DistillSpace(_Strict):
    """Knowledge distillation after the layers are compressed (`autocompress.distill.DistillConfig`). A list
    is a choice the sampler makes, a scalar a constant; the fields other than steps are drawn only when the
    trial's steps > 0 (steps 0 = no distillation)."""

    steps: list[int] | int = [0, 100, 200]
    lr: list[float] | float = [1e-4, 3e-4]
    temperature: list[float] | float = 2.0
    alpha: list[float] | float = 1.0
    beta: list[float] | float = [0.0, 1.0]
    layers: list[Literal["all", "last"]] | Literal["all", "last"] = ["all", "last"]
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(128, ge=1)
    eval_every: int = Field(25, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _valid(self) -> "DistillSpace":
        from autocompress.distill_spec import DistillConfig

        for name in ("steps", "lr", "temperature", "alpha", "beta", "layers"):
            values = self.choices(name)
            if not values:
                raise ValueError(f"{name}: give at least one choice")
            for v in values:
                try:  # each value alone, the others at values DistillConfig accepts
                    DistillConfig(**{"alpha": 1.0, name: v})
                except UserError as exc:
                    raise ValueError(str(exc)) from None
        if 0 in self.choices("alpha") and 0 in self.choices("beta"):
            raise ValueError("alpha 0 can be drawn with beta 0, which leaves nothing to train; drop 0 from one")
        return self

    def choices(self, name: str) -> list[Any]:
        """The choices of a field (a scalar is the one choice)."""
        value = getattr(self, name)
        return list(value) if isinstance(value, list) else [value]


class SpaceSection(_Strict):
    share: Literal["layer", "group"] = "group"
    quantize: QuantizeSpace | None = None
    embeddings: EmbeddingSpace | None = None
    prune: PruneSpace | None = None
    structured: StructuredSpace | None = None
    lowrank: LowRankSpace | None = None
    distill: DistillSpace | None = None
    kv_cache: KVCacheSpace | None = None
    vocab: VocabSpace | None = None
    depth: DepthSpace | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> "SpaceSection":
        if not any((self.quantize, self.embeddings, self.prune, self.structured, self.lowrank, self.kv_cache,
                    self.vocab, self.depth)):
            raise ValueError("the search space is empty; add at least one of quantize, embeddings, prune, "
                             "structured, lowrank, kv_cache, vocab, depth")
        return self

    @model_validator(mode="after")
    def _kmeans_without_distill(self) -> "SpaceSection":
        if self.quantize is not None and "kmeans" in self.quantize.method and self.distill is not None \
                and any(s > 0 for s in self.distill.choices("steps")):
            raise ValueError("space.quantize.method kmeans with space.distill: distillation keeps weights on the "
                             "integer grid only, not on a codebook; drop kmeans or space.distill")
        return self
