"""Hypervolume of a study's feasible front against a FIXED reference point, after every trial.

Benchmarks compare searches by the hypervolume their feasible Pareto front dominates. The reference point
must be fixed in advance and shared by every run compared (never derived from a run's own trials), or the
numbers of two runs do not compare. The computation is Optuna's own (`optuna._hypervolume.
compute_hypervolume`, exact: WFG for 3+ objectives), which takes loss vectors to MINIMIZE and a reference
point every point must be <= to; here maximized objectives are negated before the call, and points that do
not dominate the reference point (they dominate no volume) are left out first.

Normalization: with `ideal` given (the best value each objective could possibly take, e.g. fidelity 1.0,
size_mb 0.0) the hypervolume is divided by the volume of the box between `ideal` and `reference`, so 1.0
means a front that reaches the ideal point and 0.0 one that dominates nothing.

Trials counted: COMPLETE trials whose constraints (`trial.set_constraint`, Optuna's convention: every
value <= 0) all hold. A PRUNED, FAILED or infeasible trial adds nothing but still counts as a trial spent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from optuna._hypervolume import compute_hypervolume

DIRECTIONS = ("maximize", "minimize")


def _parse(objective: str | tuple[str, str]) -> tuple[str, str]:
    """'maximize fidelity' or ('maximize', 'fidelity') -> ('maximize', 'fidelity')."""
    direction, metric = objective.split() if isinstance(objective, str) else objective
    if direction not in DIRECTIONS:
        raise ValueError(f"objective {objective!r}: the direction must be 'maximize' or 'minimize'")
    return direction, metric


def hypervolume(points: Iterable[Sequence[float]], objectives: Sequence[str | tuple[str, str]],
                reference: Mapping[str, float], ideal: Mapping[str, float] | None = None) -> float:
    """Hypervolume that `points` (objective values, in the order of `objectives`) dominate with respect to
    `reference` (metric -> value). Normalized by the ideal-to-reference box when `ideal` is given (see the
    module docstring). Points with a non-finite value or worse than the reference in any objective are
    ignored; no points give 0.0."""
    parsed = [_parse(o) for o in objectives]
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d, _ in parsed])
    ref = sign * np.array([float(reference[m]) for _, m in parsed])
    rows = [sign * np.asarray(p, dtype=float) for p in points]
    loss = np.array([r for r in rows if np.all(np.isfinite(r)) and np.all(r <= ref)], dtype=float)
    volume = 0.0 if loss.size == 0 else float(compute_hypervolume(loss.reshape(-1, len(parsed)), ref))
    if ideal is None:
        return volume
    box = math.prod(abs(float(reference[m]) - float(ideal[m])) for _, m in parsed)
    if box <= 0:
        raise ValueError("ideal and reference must differ in every objective to normalize")
    return volume / box


def is_feasible(trial: Any) -> bool:
    """A COMPLETE trial whose constraints all hold (Optuna's convention: value <= 0)."""
    return trial.state.name == "COMPLETE" and all(v <= 0 for v in (trial.constraints or {}).values())


def hypervolume_curve(trials: Sequence[Any], objectives: Sequence[str | tuple[str, str]],
                      reference: Mapping[str, float], ideal: Mapping[str, float] | None = None) -> list[float]:
    """Hypervolume of the feasible front after each trial, in trial-number order: element i counts the
    first i + 1 trials (any state). Non-decreasing by construction."""
    ordered = sorted(trials, key=lambda t: t.number)
    curve, points = [], []
    for t in ordered:
        if is_feasible(t) and t.values is not None:
            points.append(list(t.values))
        curve.append(hypervolume(points, objectives, reference, ideal) if points else 0.0)
    return curve


def run_curve(run_dir: str | Path, reference: Mapping[str, float],
              ideal: Mapping[str, float] | None = None) -> list[float]:
    """`hypervolume_curve` of the study of an autocompress run directory (objectives from its config)."""
    from autocompress.search.rundir.reader import RunDir

    run = RunDir.open(run_dir)
    return hypervolume_curve(run.trials, run.config.objectives, reference, ideal)


def trials_to_reach(curve: Sequence[float], target: float) -> int | None:
    """How many trials the run needed before its hypervolume was >= `target` (1-based), or None if never."""
    for i, value in enumerate(curve):
        if value >= target - 1e-12:
            return i + 1
    return None
