"""Budgeted allocation: from per-unit sensitivity, the plan of least predicted quality drop within a cost
budget (packed bytes, or predicted latency), one plan per budget. HAWQ-V3 allocates bit-widths the same way,
with an integer program over per-layer sensitivities; here the program is a multiple-choice knapsack solved
exactly over a pruned frontier.

Model: each (unit, technique) is a group whose options are "unchanged" (drop 0, saving 0) and every measured
choice of `Sensitivity` (its drop; its saving: the cost of the reference plan less the cost of the plan that
changes only that unit); a plan takes one option per group; its predicted drop is the sum of its options'
drops and its predicted cost the reference's less the sum of their savings. The cost sum is exact for bytes
(the packed size is a sum over layers, when each unit takes one technique) and for latency models that sum
per-layer times; the drop sum is an estimate (units interact a little; a seeded plan is evaluated like any
other trial). `knapsack_plans` gives the plan at each uniform baseline's cost: the one-shot allocation that
AutoRound's AutoScheme and ModelOpt's AutoQuantize make under an average-bits budget
(benchmarks/llm_search_quality.py compares the search with it).

Seeding (`budget_params`): for each uniform baseline, the plan of least predicted drop at no more bytes (and
at no more predicted latency) than the baseline. The baseline is one such plan, so the seed is predicted at
least as good at no more cost: the study starts from candidates that dominate each uniform corner, where the
measured drops say any exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

Option = tuple[float, int]  # (drop, saving in whole units of the cost: bytes, picoseconds)


def least_drop(groups: Sequence[Sequence[Option]], required: int, max_states: int = 20000) -> list[int] | None:
    """Index of one option per group minimizing the summed drop subject to summed savings >= `required`;
    None when even the most saving options fall short. Exact: after each group it keeps every (savings, drop)
    pair no other pair beats on both, savings counted up to `required` (beyond it all are equal). Should that
    frontier pass `max_states` pairs, it keeps the largest saving per 1/`max_states` of `required` (the bound
    is still met when it can be; the least drop may be missed). Ties go to the lower indexes."""
    if required <= 0:
        return [min(range(len(g)), key=lambda i, g=g: (g[i][0], i)) for g in groups]
    frontier: list[tuple[int, float, tuple]] = [(0, 0.0, ())]  # (savings capped at required, drop, picks)
    for options in groups:
        merged: dict[int, tuple[float, tuple]] = {}
        for saved, drop, picks in frontier:
            for i, (d, s) in enumerate(options):
                key, value = min(required, saved + s), (drop + d, picks + (i,))
                if key not in merged or value < merged[key]:
                    merged[key] = value
        frontier = []
        for saved in sorted(merged, reverse=True):  # keep a pair only when it drops less than every larger saving
            drop, picks = merged[saved]
            if not frontier or drop < frontier[-1][1]:
                frontier.append((saved, drop, picks))
        if len(frontier) > max_states:
            step, thinned = required / max_states, {}
            for saved, drop, picks in frontier:
                thinned.setdefault(int(saved // step), (saved, drop, picks))  # the largest saving per bucket
            frontier = sorted(thinned.values(), reverse=True)
    best = frontier[0]  # the largest saving
    return list(best[2]) if best[0] >= required else None


@dataclass(frozen=True)
class BudgetPlan:
    """The knapsack's plan at one uniform baseline's cost. `cost`: "size" or "latency"; `baseline`: that
    baseline's label (`ConfigSpace.uniform_plans`); `budget`: its cost in MB or predicted ms; `label`: e.g.
    "sensitivity size<=13.39MB"; `params` / `plan`: the chosen plan (Optuna params of the joint space, and
    the plan they give); `predicted_drop`: the summed drops of the measured choices it consists of."""

    cost: str
    baseline: str
    budget: float
    label: str
    params: dict[str, Any]
    plan: Any
    predicted_drop: float


def knapsack_plans(space: Any, sens: Any, info: Any, latency: tuple[Any, Any] | None = None) -> list[BudgetPlan]:
    """For each uniform baseline (`ConfigSpace.uniform_plans`, in order) and cost, the plan of least predicted
    drop at no more packed bytes than the baseline and, given `latency` = (latency model, workload) of a
    target priced from the plan, at no more predicted latency (savings counted in whole picoseconds, each
    rounded to the nearest, so the bound holds to within one picosecond per unit). One `BudgetPlan` per
    (cost, baseline) whose budget some plan meets, duplicates and uniform plans included: the one-shot
    sensitivity + knapsack allocation of per-layer formats under a size (average bits) or latency budget."""
    from autocompress.evaluators.size import plan_size
    from autocompress.search.seeding.sensitivity import measured_choices, plan_params, single_unit_plan

    choices = measured_choices(space)
    reference = single_unit_plan(space, None, {})[1]
    labels: dict[tuple[str, str], list[str]] = {}  # (unit, technique) -> the labels of its options
    for unit, drops in sens.layers.items():
        for label in drops:
            if label in choices:
                labels.setdefault((unit, choices[label][0]), []).append(label)
    # cost name -> (cost of a plan, label format, scale to the label's unit, saving of (unit, label))
    costs = {"size": (lambda plan: plan_size(plan, info).total_bytes, "{:.2f}MB", 1e-6,
                      lambda unit, label: sens.saved_bytes[unit][label])}  # measured with the drops
    if latency is not None:
        model, workload = latency

        def picoseconds(plan: Any) -> float:
            return model.predict(plan, info, workload).total_ms * 1e9

        base_ps = picoseconds(reference)
        costs["latency"] = (picoseconds, "{:.2f}ms", 1e-9, lambda unit, label: round(
            base_ps - picoseconds(single_unit_plan(space, unit, choices[label][1])[1])))
    out: list[BudgetPlan] = []
    for name, (cost, unit_text, scale, saving) in costs.items():
        base, rounded = cost(reference), name == "latency"
        options = [[(0.0, 0)] + [(sens.layers[unit][lb], saving(unit, lb)) for lb in group_labels]
                   for (unit, _tech), group_labels in labels.items()]
        for baseline, uniform in space.uniform_plans().items():
            limit = cost(uniform)
            pick = least_drop(options, round(base - limit) - (len(options) if rounded else 0))
            if pick is None:
                continue
            chosen = {group: choices[group_labels[i - 1]][1]
                      for (group, group_labels), i in zip(labels.items(), pick) if i}
            params, plan = plan_params(space, chosen)
            drop = sum(opts[i][0] for opts, i in zip(options, pick))
            label = f"sensitivity {name}<={unit_text.format(limit * scale)}"
            out.append(BudgetPlan(name, baseline, limit * scale, label, params, plan, drop))
    return out


def budget_params(space: Any, sens: Any, info: Any, latency: tuple[Any, Any] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """Label -> Optuna params of one plan per uniform baseline (`ConfigSpace.uniform_plans`) and cost: the
    `knapsack_plans` ("sensitivity size<=13.39MB", "sensitivity latency<=9.09ms"). A plan met before, or
    equal to a uniform baseline, is left out."""
    baselines = list(space.uniform_plans().values())
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for chosen in knapsack_plans(space, sens, info, latency):
        key = json.dumps(chosen.params, sort_keys=True, default=str)
        if chosen.plan.is_empty or key in seen or chosen.plan in baselines:  # a uniform plan runs as its baseline
            continue
        seen.add(key)
        out[chosen.label] = chosen.params
    return out
