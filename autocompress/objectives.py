"""What a search optimizes and limits: objectives ("maximize fidelity") and constraints ("size_mb <= 20") parsed,
and the quality metric an early-stopping pruner watches, with the bounds a threshold pruner stops at.

`parse_objective` / `parse_constraint` raise `ValueError` (the config turns it into a `UserError` naming the
key); `threshold_bounds` raises `UserError`. Only the metric tables of config_sections.py are needed here, so
config.py and search/early_stopping.py both import this module and neither imports the other for it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from autocompress.config_sections import METRICS, PLAN_METRICS, TASK_METRICS, _check_metric
from autocompress.errors import UserError, echo

if TYPE_CHECKING:
    from autocompress.config import SearchConfig

_CONSTRAINT = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")
_OBJECTIVE = re.compile(r"^\s*(maximize|minimize)\s+([a-z_][a-z0-9_]*)\s*$")
TASK_QUALITY = {"embedding": "fidelity", "causal-lm": "perplexity", "sequence-classification": "accuracy"}


def parse_objective(text: str) -> tuple[str, str]:
    """'maximize fidelity' -> ('maximize', 'fidelity')."""
    m = _OBJECTIVE.match(text)
    if not m:
        raise ValueError(f"objective {echo(text)} must read 'maximize METRIC' or 'minimize METRIC'")
    _check_metric(m.group(2))
    return m.group(1), m.group(2)


def parse_constraint(text: str) -> tuple[str, str, float]:
    """'fidelity >= 0.98' -> ('fidelity', '>=', 0.98)."""
    m = _CONSTRAINT.match(text)
    if not m:
        raise ValueError(f"constraint {echo(text)} must read 'METRIC OP NUMBER' with OP one of <=, >=, <, >")
    _check_metric(m.group(1))
    try:
        return m.group(1), m.group(2), float(m.group(3))
    except ValueError:
        raise ValueError(f"constraint {echo(text)}: {echo(m.group(3))} is not a number") from None


def quality_metric(config: SearchConfig, task: str) -> tuple[str, str]:
    """(metric, "maximize"|"minimize") the pruner watches: `pruner.metric`, else the first objective the
    task's evaluator measures, else the task's quality metric."""
    metric = config.pruner.metric
    if metric is None:
        measured = [m for _, m in map(parse_objective, config.objectives)
                    if m in TASK_METRICS[task] and m not in PLAN_METRICS]
        metric = measured[0] if measured else TASK_QUALITY[task]
    return metric, "maximize" if METRICS[metric] == "max" else "minimize"


def threshold_bounds(config: SearchConfig, task: str) -> dict[str, float]:
    """`lower` / `upper` of the threshold pruner: the configured ones, else the constraints on the pruner's
    quality metric (`fidelity >= 0.9` -> lower 0.9). Raises `UserError` when there is neither."""
    p = config.pruner
    bounds = {k: getattr(p, k) for k in ("lower", "upper") if getattr(p, k) is not None}
    if bounds:
        return bounds
    metric, _ = quality_metric(config, task)
    for name, op, value in map(parse_constraint, config.constraints):
        if name == metric:
            bounds["lower" if op in (">=", ">") else "upper"] = value
    if not bounds:
        raise UserError(f"pruner threshold has no bound: add a constraint on {metric} (e.g. '{metric} >= 0.9') "
                        "or set pruner.lower / pruner.upper")
    return bounds
