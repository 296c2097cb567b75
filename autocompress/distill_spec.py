"""`DistillConfig`: how a compressed model is trained to match its original, as immutable, JSON-exact data.

It is the optional plan-level `distill` field of `CompressionPlan`, so a plan states everything a trial did.
It is plan-side data, kept apart from the distillation package: this module imports nothing heavy (no torch)
and nothing from `autocompress.distill`, so `autocompress.plan` depends on it alone, and the training
(`autocompress.distill.train`: `distill`, `apply_and_distill`) imports it from here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from autocompress.errors import UserError, from_fields

LAYER_CHOICES = ("all", "last")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation after `apply_plan` (see `autocompress.distill.train.distill`).

      steps: optimizer steps, >= 0 (0 = off: a plan drops a config with 0 steps).
      lr: AdamW learning rate, > 0.
      temperature: T > 0 of the logit KD loss of causal LMs and classifiers (unused for embeddings).
      alpha: weight >= 0 of the output KD loss.
      beta: weight >= 0 of the hidden-state matching loss (alpha + beta > 0).
      layers: which block outputs beta matches: "all", "last", or a list of distinct block indices >= 0
        (checked against the model when training starts).
      batch_size, max_length: rows per step and tokens per row (>= 1): they bound the memory of a step.
      seed: order in which the calibration rows are cycled.
      eval_every: steps between intermediate reports (>= 1).
    """

    steps: int = 200
    lr: float = 1e-4
    temperature: float = 2.0
    alpha: float = 1.0
    beta: float = 1.0
    layers: str | tuple[int, ...] = "all"
    batch_size: int = 16
    max_length: int = 128
    seed: int = 0
    eval_every: int = 50

    def __post_init__(self) -> None:
        if isinstance(self.layers, (list, tuple)):
            object.__setattr__(self, "layers", tuple(self.layers))
        for name in ("lr", "temperature", "alpha", "beta"):
            value = getattr(self, name)
            if type(value) is int:
                object.__setattr__(self, name, float(value))
        _check(self)

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    def block_indices(self, n_blocks: int) -> list[int]:
        """The block indices `layers` names in a model of `n_blocks` blocks; `UserError` if one is out of range."""
        if self.layers == "all":
            return list(range(n_blocks))
        if self.layers == "last":
            return [n_blocks - 1] if n_blocks else []
        bad = [i for i in self.layers if i >= n_blocks]
        if bad:
            raise UserError(f"distill.layers: block {bad[0]} does not exist (the model has {n_blocks} blocks, "
                            f"0..{n_blocks - 1}); use indices below {n_blocks}, 'all' or 'last'")
        return list(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Every field (small, and explicit in a trial's record); `layers` as a string or a list."""
        data = asdict(self)
        if isinstance(self.layers, tuple):
            data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "distill") -> "DistillConfig":
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: expected an object of distillation settings such as {{\"steps\": 200}}")
        return from_fields(cls, data, _FIELDS, where)

    def summary(self) -> str:
        """Short text, e.g. "distill 200 steps lr 0.0001"."""
        return f"distill {self.steps} steps lr {self.lr:g}"


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(c: DistillConfig) -> None:
    def bad(msg: str) -> None:
        raise UserError(msg)

    if not _is_int(c.steps) or c.steps < 0:
        bad(f"steps={c.steps!r} must be an integer >= 0 (0 turns distillation off)")
    if not _is_number(c.lr) or c.lr <= 0:
        bad(f"lr={c.lr!r} must be a positive number such as 1e-4")
    if not _is_number(c.temperature) or c.temperature <= 0:
        bad(f"temperature={c.temperature!r} must be a positive number such as 2.0")
    for name in ("alpha", "beta"):
        v = getattr(c, name)
        if not _is_number(v) or v < 0:
            bad(f"{name}={v!r} must be a number >= 0")
    if c.alpha == 0 and c.beta == 0:
        bad("alpha and beta are both 0, so there is nothing to train on; make one of them positive")
    if isinstance(c.layers, str):
        if c.layers not in LAYER_CHOICES:
            bad(f"layers={c.layers!r} is unknown; use 'all', 'last' or a list of block indices")
    elif not isinstance(c.layers, tuple) or not c.layers or not all(_is_int(i) and i >= 0 for i in c.layers):
        bad(f"layers={list(c.layers) if isinstance(c.layers, tuple) else c.layers!r} must be 'all', 'last' "
            "or a non-empty list of block indices >= 0")
    elif len(set(c.layers)) != len(c.layers):
        bad(f"layers={list(c.layers)} repeats a block index; list each block once")
    for name in ("batch_size", "max_length", "eval_every"):
        v = getattr(c, name)
        if not _is_int(v) or v < 1:
            bad(f"{name}={v!r} must be a positive integer")
    if not _is_int(c.seed):
        bad(f"seed={c.seed!r} must be an integer")


_FIELDS = tuple(f.name for f in fields(DistillConfig))
