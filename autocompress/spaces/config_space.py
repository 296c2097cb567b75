"""`ConfigSpace`: the search space that a config's `space:` section describes, per decision unit.

The space is built from the config's section and the model's inventory alone, in parts:
  spaces/units.py      the decision units: which layers, tables and structures share one setting
  spaces/choices.py    the choices beyond the config's lists: checked, rank choices filtered per unit, "dense"
  spaces/draws.py      the Optuna params, and the order and conditions in which a trial draws them into a plan
  spaces/baselines.py  the uniform baselines (one per compressing choice of a technique's main field)
  spaces/kv_cache.py, spaces/vocab.py, spaces/depth.py   the plan-level decisions drawn after the layers'
Target format: with `target.format` (e.g. gguf) the quantize and embeddings choices are narrowed to what that
format holds and the techniques it cannot hold are refused (spaces/formats.py); under gguf every quantized
unit gets its `gguf_type`.
"""

from __future__ import annotations

from typing import Any, Sequence

import optuna

from autocompress.config import SpaceSection
from autocompress.errors import UserError
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan
from autocompress.spaces import baselines
from autocompress.spaces._base import SearchSpace
from autocompress.spaces.choices import check_choices, fitting_ranks, prune_patterns
from autocompress.spaces.depth import DepthChoices
from autocompress.spaces.draws import TECHNIQUES, Pick, build_plan
from autocompress.spaces.formats import FormatChoices, check_space
from autocompress.spaces.kv_cache import KVCacheChoices
from autocompress.spaces.units import technique_units
from autocompress.spaces.vocab import VocabChoices


class ConfigSpace(SearchSpace):
    """The per-unit space of a `SpaceSection` over a model inventory (see the module docstring).
    `target_format` (`target.format`, e.g. "gguf") restricts the choices to what that format holds
    (spaces/formats.py); `UserError` for a space it cannot hold.

    Attributes: `space`, `info`, `formats` (`FormatChoices`); `technique_units` (technique -> unit -> its
    layers, tables' weights or structure); `ranks` (lowrank unit -> its filtered rank choices), `patterns`
    (space.prune's pattern choices), `tied` (the Linears that hold a tied table: never smoothed); `kv`, `vocab`,
    `depth` (the plan-level sections' choices, or None)."""

    def __init__(self, space: SpaceSection, info: ModelInfo, target_format: str | None = None) -> None:
        self.space, self.info = space, info
        try:
            check_space(space, target_format)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.formats = FormatChoices(target_format)
        check_choices(space)
        self.technique_units = technique_units(space, info, self.formats)
        self.tied = {e.tied_to for e in info.embeddings.values() if e.tied_to is not None}
        structured = self.technique_units.get("structured", {})
        self.ranks = {u: fitting_ranks(m, info, space, structured)
                      for u, m in self.technique_units.get("lowrank", {}).items()}
        self.patterns = prune_patterns(space)
        self.kv = KVCacheChoices(space.kv_cache, info) if space.kv_cache is not None else None
        self.vocab = VocabChoices(space.vocab, info) if space.vocab is not None else None
        self.depth = DepthChoices(space.depth, info, space.distill) if space.depth is not None else None

    # ---- the contract --------------------------------------------------------------------------------
    @property
    def units(self) -> dict[str, tuple[str, ...]]:
        """Every decision unit of every technique: unit name -> its layers (or structure)."""
        return {u: m for units in self.technique_units.values() for u, m in units.items()}

    def sample(self, trial: optuna.trial.BaseTrial) -> CompressionPlan:
        def pick(unit: str, field: str, choices: Sequence[Any]) -> Any:
            if len(choices) == 1:
                return choices[0]
            return trial.suggest_categorical(f"{unit}.{field}", list(choices))

        return build_plan(self, pick, TECHNIQUES)

    def uniform_plans(self) -> dict[str, CompressionPlan]:
        """One plan per non-trivial choice of each technique's main field, on all its units; the other
        fields at their first choice. A unit whose filtered ranks lack the rank is left unfactorized."""
        return baselines.uniform_plans(self)

    def uniform_params(self) -> dict[str, dict[str, Any]]:
        """The Optuna params of each uniform baseline in the *joint* space (what `study.enqueue_trial` needs):
        the baseline's technique set to its one choice on every unit, every other technique switched off
        where "off" (null bits or rank, sparsity 0, dense) is among its choices, other fields at their first
        choice. Recorded by replaying the draws, so `sample` on these params gives exactly these plans."""
        return baselines.uniform_params(self)

    def replay(self, pick: Pick) -> tuple[dict[str, Any], CompressionPlan]:
        """(Optuna params, plan) of the joint space when `pick(unit, field, choices)` makes every decision:
        the params are what `study.enqueue_trial` needs for `sample` to give exactly this plan. `pick` must
        return one of `choices`."""
        params: dict[str, Any] = {}

        def record(unit: str, field: str, choices: Sequence[Any]) -> Any:
            value = pick(unit, field, choices)
            if value not in choices:
                raise ValueError(f"{unit}.{field}: {value!r} is not among the choices {list(choices)}")
            if len(choices) > 1:
                params[f"{unit}.{field}"] = value
            return value

        return params, build_plan(self, record, TECHNIQUES)

    def main_choices(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Label -> (technique, {field: value}) for every compressing choice of each technique's main field,
        e.g. "quantize bits=4" -> ("quantize", {"bits": 4}) (the uniform baselines use the same labels, plus
        " act_bits=a" when they come once per activation format)."""
        return baselines.uniform_wanted(self, all_embeddings=True, formats=False, kv=False)
