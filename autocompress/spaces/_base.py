"""The search-space contract: an Optuna trial in, a `CompressionPlan` out, no weights touched.

A `SearchSpace` is built from a model's inventory (`ModelInfo`) alone. Its methods:

  sample(trial) -> CompressionPlan
      Define-by-run: calls `trial.suggest_*` for the decisions it needs, conditionally on the values already
      drawn, and returns the plan. Cheap (no tensors, no model); deterministic given the trial's params, so
      two trials with the same params give equal plans. The plan passes `validate_plan(plan, info)`.
  plan_from_params(params) -> CompressionPlan
      Rebuilds exactly the plan that a finished trial with these `trial.params` sampled (export, resume,
      re-evaluation). The base class replays `sample` on an `optuna.trial.FixedTrial`, so the two cannot
      disagree. A missing or out-of-choices param raises `UserError`; params this space never suggests
      are ignored.
  units -> dict[str, tuple[str, ...]]
      The decision units: each unit name maps to the layers (or structures) that share its decisions.
  uniform_plans() -> dict[str, CompressionPlan]
      Baselines for reports: one plan per single choice applied to every unit ("quantize bits=4").
"""

from __future__ import annotations

from typing import Any, Mapping

import optuna

from autocompress.errors import UserError
from autocompress.plan import CompressionPlan


class SearchSpace:
    """Turns an Optuna trial into a `CompressionPlan` without touching weights (see the module docstring)."""

    def sample(self, trial: optuna.trial.BaseTrial) -> CompressionPlan:
        raise NotImplementedError

    def plan_from_params(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The plan a trial with these params sampled: `sample` replayed on a `FixedTrial`."""
        try:
            return self.sample(optuna.trial.FixedTrial(dict(params)))
        except UserError:
            raise
        except ValueError as exc:  # a missing param, or a value outside the param's choices
            raise UserError(f"trial params do not fit this search space: {exc}") from None

    @property
    def units(self) -> dict[str, tuple[str, ...]]:
        raise NotImplementedError

    def uniform_plans(self) -> dict[str, CompressionPlan]:
        raise NotImplementedError
