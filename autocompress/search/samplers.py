"""The Optuna sampler a config names (`make_sampler`), and the one change autocompress makes to NSGA-II.

`SharedStudyNSGAIISampler` is Optuna's NSGA-II sampler, except that a child is crossed over only on the
parameters every one of its parents has. A search space is define-by-run: `<unit>.group_size` exists only
in trials whose `<unit>.bits` is not null. Optuna intersects the parameters of the completed trials first,
then reads the parent population, which another process of a sweep may have just chosen to include a trial
that completed in between, without that parameter; the stock sampler then fails with a KeyError in its
crossover (seen with three processes on one PostgreSQL study). Parameters left out of the crossover are
sampled independently (at random), as NSGA-II does for any parameter outside its relative search space. In
one process the two views agree and nothing changes.
"""

from __future__ import annotations

from typing import Any

import optuna

from autocompress.config import SearchConfig


class SharedStudyNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that crosses over only parameters all parents carry (see the module docstring)."""

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        parents = self.get_parent_population(study, self.get_trial_generation(study, trial))
        if not parents:
            return {}
        shared = {name: d for name, d in search_space.items() if all(name in p.params for p in parents)}
        return self._child_generation_strategy(study, shared, parents)


def make_sampler(config: SearchConfig, offset: int = 0) -> Any:
    """The configured sampler, seeded with `sampler.seed + offset` (no seed stays no seed). Constraints
    reach it through `trial.set_constraint` (Optuna >= 5).

    `join_study` passes finished trials + join number as the offset, so a resumed search does not replay
    the random draws of the first run and the processes of a sweep draw differently."""
    s = config.sampler
    seed = None if s.seed is None else s.seed + offset
    if s.name == "nsga2":
        kwargs = {"population_size": s.population_size} if s.population_size else {}
        return SharedStudyNSGAIISampler(seed=seed, **kwargs)
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, warn_independent_sampling=False)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)
