"""The seed plans of a fresh study from per-unit sensitivity: the thresholds' plans (`sensitivity.seed_params`)
and, with `sensitivity.budgets`, one plan per cost budget (`allocation.budget_params`), and with `sensitivity.swaps`,
each uniform baseline refined by its best swaps (`swaps.swap_params`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.config import SearchConfig

if TYPE_CHECKING:
    from autocompress.search.workers.backends import Backend


def sensitivity_seeds(config: SearchConfig, study: Any, backend: Backend, info: Any, space: Any,
                       recorder: Any, show_progress: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(label, params) of the plans seeded from per-unit sensitivity, for a fresh study whose config asks
    for them (measured on this backend, with a progress bar when `show_progress`, or read from the run
    directory's cache); else none."""
    s = config.sensitivity
    if s is None or not s.seed or study.get_trials(deepcopy=False):
        return []
    from autocompress.search import interrupts
    from autocompress.search.plan_targets import plan_latency_model
    from autocompress.search.progress import sensitivity_progress
    from autocompress.search.seeding.allocation import budget_params
    from autocompress.search.seeding.sensitivity import FILE, load_or_measure, seed_params

    # minutes of trial work before the first trial, nothing written until it ends
    with interrupts.interruptible(), sensitivity_progress(enabled=show_progress) as progress:
        sens, _ = load_or_measure(config, backend, info, space, Path(config.run_dir), progress=progress)
    recorder.call("log_text", (Path(config.run_dir) / FILE).read_text(), FILE)
    seeds = seed_params(space, sens, s.thresholds)
    if s.budgets:
        seeds.update(budget_params(space, sens, info, plan_latency_model(config)))
    if s.swaps:
        from autocompress.search.seeding.swaps import swap_params

        seeds.update(swap_params(space, sens, info, s.swaps))
    return list(seeds.items())
