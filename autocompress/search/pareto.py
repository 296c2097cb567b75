"""The Pareto front of a study and the rule that picks one trial from it.

A pick rule reads `maximize METRIC` or `minimize METRIC`, optionally followed by
`where CONDITION [and CONDITION ...]`, each condition `METRIC OP NUMBER` (OP one of <=, >=, <, >):
  "minimize size_mb where fidelity >= 0.99"  -> the smallest plan that keeps fidelity >= 0.99.
The rule chooses among the feasible Pareto trials (the study's constraints hold, no other feasible trial
is at least as good on every objective and better on one). Without a rule, the first objective decides.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Sequence

from autocompress.config import parse_constraint, parse_objective
from autocompress.errors import UserError

OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class PickRule:
    direction: str
    metric: str
    conditions: tuple[tuple[str, str, float], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "PickRule":
        parts = re.split(r"\s+where\s+", text.strip(), maxsplit=1)
        head, tail = parts[0], parts[1] if len(parts) > 1 else ""
        try:
            direction, metric = parse_objective(head)
            conditions = tuple(parse_constraint(c) for c in re.split(r"\s+and\s+", tail) if c.strip())
        except ValueError as exc:
            raise UserError(f"pick rule {text!r}: {exc}; e.g. 'minimize size_mb where fidelity >= 0.99'") from None
        return cls(direction, metric, conditions)

    def __str__(self) -> str:
        cond = " and ".join(f"{m} {op} {v:g}" for m, op, v in self.conditions)
        return f"{self.direction} {self.metric}" + (f" where {cond}" if cond else "")

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric the rule reads: the one it optimizes, then those its conditions name."""
        return tuple(dict.fromkeys((self.metric, *(m for m, _, _ in self.conditions))))

    def matches(self, metrics: dict[str, float]) -> bool:
        return all(m in metrics and OPS[op](metrics[m], v) for m, op, v in self.conditions)

    def choose(self, trials: Sequence[Any]) -> Any | None:
        """The trial (anything with `.user_attrs["metrics"]`) that best satisfies the rule, or None."""
        ok = [t for t in trials if self.metric in metrics_of(t) and self.matches(metrics_of(t))]
        if not ok:
            return None
        best = max if self.direction == "maximize" else min
        return best(ok, key=lambda t: (metrics_of(t)[self.metric], -t.number))


def metrics_of(trial: Any) -> dict[str, float]:
    return trial.user_attrs.get("metrics", {})


def default_rule(objectives: Sequence[str]) -> PickRule:
    direction, metric = parse_objective(objectives[0])
    return PickRule(direction, metric)


def pareto_rows(trials: Sequence[Any], objectives: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (trial number, each objective, the plan in one line) sorted by the first objective."""
    names = [parse_objective(o)[1] for o in objectives]
    first_dir = parse_objective(objectives[0])[0]
    ordered = sorted(trials, key=lambda t: t.values[0], reverse=first_dir == "maximize")
    header = ["trial", *names, "plan"]
    rows = [[str(t.number), *(f"{v:.5g}" for v in t.values), t.user_attrs.get("plan_summary", "?")]
            for t in ordered]
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def best_values(trials: list[Any], objectives: list[tuple[str, str]]) -> dict[str, float]:
    """metric -> its best value over the feasible complete `trials`: the extremes of `study.best_trials`
    (the Pareto set holds each objective's optimum), from a list of trials already read."""
    best: dict[str, float] = {}
    for t in trials:
        if t.state.name != "COMPLETE" or t.values is None or any(v > 0 for v in t.constraints.values()):
            continue
        for (direction, metric), v in zip(objectives, t.values):
            pick = max if direction == "maximize" else min
            best[metric] = pick(best.get(metric, v), v)
    return best
