"""A finished study reduced to what a report draws: one `TrialResult` per COMPLETE trial, the front, the pick.

Built once from a `RunDir` and shared by the markdown table, the PNGs and the HTML page, so all of them
agree on which trials are feasible, on the front, baselines, and picked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autocompress.config import parse_constraint
from autocompress.errors import UserError
from autocompress.report.labels import axis_label, column_label
from autocompress.search.pareto import default_rule
from autocompress.search.rundir.plan_files import plan_path
from autocompress.search.rundir.trial_result import TrialResult


@dataclass
class StudyView:
    study_name: str
    objectives: list[tuple[str, str]]  # [(direction, metric)]
    constraints: list[tuple[str, str, float]]  # [(metric, op, bound)]
    target: Any  # config.target (TargetSection) or None
    points: list[TrialResult]
    counts: dict[str, int]  # trial state -> how many
    picked: TrialResult | None
    pick_rule: str
    notes: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        return [m for _, m in self.objectives]

    @property
    def front(self) -> list[TrialResult]:
        """The feasible Pareto trials, best first by the first objective."""
        direction, metric = self.objectives[0]
        pts = [p for p in self.points if p.front]
        return sorted(pts, key=lambda p: (p.values[metric], -p.number), reverse=direction == "maximize")

    @property
    def baselines(self) -> list[TrialResult]:
        """The trials the search was started from: uniform settings, and plans seeded from the
        sensitivity (labels "sensitivity drop<=T") when the config asked for them."""
        return [p for p in self.points if p.baseline is not None]

    @property
    def baseline_name(self) -> str:
        """What to call them: 'uniform baseline', or 'baseline or seeded plan' when seeds are among them."""
        seeded = any(p.baseline.startswith("sensitivity") for p in self.baselines)
        return "baseline or seeded plan" if seeded else "uniform baseline"

    def label(self, metric: str) -> str:
        return axis_label(metric, self.target)

    def column(self, metric: str) -> str:
        return column_label(metric, self.target)

    def dominates(self, a: TrialResult, b: TrialResult) -> bool:
        """True when `a` is at least as good as `b` on every objective and better on one."""
        better = False
        for direction, metric in self.objectives:
            x, y = a.values[metric], b.values[metric]
            if direction == "maximize":
                x, y = -x, -y
            if x > y:
                return False
            better |= x < y
        return better

    def dominated_by(self, point: TrialResult) -> list[TrialResult]:
        """The front trials that dominate `point` (empty for a point on the front)."""
        return [f for f in self.front if f.number != point.number and self.dominates(f, point)]

    def title(self) -> str:
        """'study tiny: 14 trials (12 complete, 2 pruned), 5 on the feasible Pareto front'."""
        total = sum(self.counts.values())
        parts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        infeasible = sum(1 for p in self.points if not p.feasible)
        extra = f", {infeasible} complete but infeasible" if infeasible else ""
        return (f"study {self.study_name}: {total} trials ({parts}){extra}, "
                f"{len(self.front)} on the feasible Pareto front")

    def summary_lines(self) -> list[str]:
        """A few lines of plain text: objectives, constraints, the pick."""
        lines = ["Objectives: " + ", ".join(f"{d} {m}" for d, m in self.objectives) + "."]
        if self.constraints:
            lines.append("Constraints: " + ", ".join(f"{m} {op} {b:g}" for m, op, b in self.constraints) + ".")
        if self.picked is not None:
            lines.append(f"Picked by `{self.pick_rule}`: trial {self.picked.number} ({self.picked.plan_summary}).")
        lines += self.notes
        return lines


def study_view(run: Any, pick: str | None = None, trial: int | None = None) -> StudyView:
    """Read `run` (a `RunDir`). `UserError` when the study has no COMPLETE trial, when `trial` is not a
    COMPLETE trial, or when an explicit `pick` rule matches nothing; a config pick rule that matches
    nothing (or an empty feasible front) leaves `picked` None with a note instead."""
    done = run.completed()
    if not done:
        run.choose()  # raises the UserError that says how to get finished trials
    metrics = [m for _, m in run.objectives]
    front = {t.number for t in run.front()}
    notes: list[str] = []
    rule = pick or run.config.pick or str(default_rule(run.config.objectives))
    chosen = None
    if trial is not None:
        chosen = run.choose(trial=trial)
        rule = f"--trial {trial}"
    else:
        try:
            chosen = run.choose(pick=pick)
        except UserError as exc:
            if pick is not None:
                raise
            notes.append(f"No trial is picked: {exc}")
    points = [TrialResult.of(t, metrics, str(plan_path(run.path, t.number)), front=t.number in front,
                             unknown_summary="?") for t in done]
    picked = next((p for p in points if chosen is not None and p.number == chosen.number), None)
    counts: dict[str, int] = {}
    for t in run.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return StudyView(study_name=run.config.study_name, objectives=list(run.objectives),
                     constraints=[parse_constraint(c) for c in run.config.constraints], target=run.config.target,
                     points=points, counts=counts, picked=picked, pick_rule=rule, notes=notes)
