"""Budgeted allocation: from per-unit sensitivity, the plan of least predicted quality drop within a byte
budget, one plan per budget (HAWQ-V3 allocates bits the same way, with an integer program over per-layer
sensitivities; here the program is a multiple-choice knapsack solved exactly by dynamic programming).

Model: each (unit, technique) is a group whose options are "unchanged" (drop 0, 0 bytes saved) and every
measured choice of `Sensitivity` (its drop, its saved bytes); a plan takes one option per group; its
predicted drop is the sum of its options' drops and its predicted size the reference's bytes less the sum of
their savings. Both sums are exact for the bytes (the packed size is a sum over layers) and an estimate for
the drop (drops of different units interact a little; the seeded plans are evaluated like any other trial).

Seeding (`budget_params`): for each uniform baseline, the plan of least predicted drop at no more bytes than
the baseline. The baseline itself is one such plan, so the seeded plan is predicted at least as good at no
more bytes: the study starts from candidates that dominate each uniform corner, where any exist.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

Option = tuple[float, int]  # (drop, saved bytes)


def least_drop(groups: Sequence[Sequence[Option]], required: int, max_states: int = 20000) -> list[int] | None:
    """Index of one option per group minimizing the summed drop subject to summed savings >= `required`
    bytes; None when even the most saving options fall short. Exact: after each group it keeps every
    (savings, drop) pair no other pair beats on both, savings counted up to `required` (beyond it all are
    equal); should that frontier pass `max_states` it keeps the best pair per 1/`max_states` of `required`
    (still meeting the bound, perhaps not the least drop). Ties go to the lower indexes."""
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


def budget_params(space: Any, sens: Any, info: Any) -> dict[str, dict[str, Any]]:
    """Label -> Optuna params of one plan per uniform baseline (`ConfigSpace.uniform_plans`): the least
    predicted drop at no more packed bytes than the baseline (module docstring). Baselines of equal bytes
    share one plan; a plan equal to the baseline itself, or to one before, is left out."""
    from autocompress.evaluators.size import plan_size
    from autocompress.search.sensitivity import _single, measured_choices, plan_params

    choices = measured_choices(space)
    groups: list[list[Option]] = []
    owners: list[tuple[str, str, list[str]]] = []  # per group: (unit, technique, label of each option but 0)
    for unit, drops in sens.layers.items():
        per_tech: dict[str, list[str]] = {}
        for label in drops:
            if label in choices and sens.saved_bytes.get(unit, {}).get(label, 0) > 0:
                per_tech.setdefault(choices[label][0], []).append(label)
        for tech, labels in per_tech.items():
            owners.append((unit, tech, labels))
            groups.append([(0.0, 0)] + [(drops[lb], sens.saved_bytes[unit][lb]) for lb in labels])
    reference_bytes = plan_size(_single(space, None, {})[1], info).total_bytes
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for name, baseline in space.uniform_plans().items():
        limit = plan_size(baseline, info).total_bytes
        pick = least_drop(groups, reference_bytes - limit)
        if pick is None:
            continue
        chosen = {(unit, tech): choices[labels[i - 1]][1] for (unit, tech, labels), i in zip(owners, pick) if i}
        params, plan = plan_params(space, chosen)
        key = json.dumps(params, sort_keys=True, default=str)
        if plan.is_empty or key in seen or plan == baseline:
            continue
        seen.add(key)
        out[f"sensitivity size<={limit / 1e6:.2f}MB"] = params
    return out
