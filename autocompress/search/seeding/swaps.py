"""Swap seeds: each uniform baseline refined by swaps between units of one shape that add no bytes.

Where quantization is harsh, drops measured one unit at a time from the reference add up badly: at 3 bits on
SmolLM2-135M the knapsack's plan (`allocation.knapsack_plans`), predicted better than uniform 3-bit, measures
worse, yet uniform 3-bit is not Pareto-optimal. A swap stays next to the baseline, where one unit's drop
predicts better: one unit moves to a milder choice (it gains `drop(baseline) - drop(milder)`), and another unit
of the same shape (the same bytes saved per choice) to a harsher one that saves at least the bytes the first
move costs (it loses `drop(harsher) - drop(baseline)`). A swap is kept when its predicted gain exceeds its loss.

`swap_params`: for each uniform baseline and each count k, the baseline with its k best swaps (greatest gain
less loss first, each unit in one swap at most); never more packed bytes than the baseline, since every swap
saves at least what it spends. Units the baseline leaves at no measured choice (another technique's, or the
mildest setting) keep the baseline's setting.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

Swap = tuple[float, str, str, str, str]  # (gain - loss, unit raised, its label, unit lowered, its label)


def single_unit_layers(space: Any, choices: dict[str, tuple[str, dict[str, Any]]],
                       sens: Any) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """(label, unit) -> (technique, {layer: setting}) for every measured choice of every unit: the layers of that
    unit as the choice sets them alone (`sensitivity.single_unit_plan`), built once for all baselines."""
    from autocompress.search.seeding.sensitivity import single_unit_plan

    out: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for label, (tech, want) in choices.items():
        for unit, layers in space.technique_units.get(tech, {}).items():
            if label in sens.layers.get(unit, {}):
                alone = single_unit_plan(space, unit, want)[1]
                out[(label, unit)] = (tech, {name: alone.layers.get(name) for name in layers})
    return out


def baseline_labels(plan: Any, alone: dict[tuple[str, str], tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, str]]:
    """Unit -> (technique, measured label) for every unit of `plan` set exactly as one measured choice sets it
    alone (`alone`: `single_unit_layers`); units with no such choice are left out. The first matching label
    in `alone`'s order wins."""
    out: dict[str, tuple[str, str]] = {}
    for (label, unit), (tech, layers) in alone.items():
        if unit not in out and all(plan.layers.get(name) == want for name, want in layers.items()):
            out[unit] = (tech, label)
    return out


def best_swaps(units: Sequence[str], label: str, sens: Any) -> list[Swap]:
    """The swaps among `units` (one shape, all at `label`) of positive predicted gain less loss, greedily paired:
    for each (milder, harsher) label pair whose harsher move saves at least the bytes the milder one costs, the
    unit that gains most is paired with the unit that loses least, and so on while the gain exceeds the loss."""
    first = units[0]
    saved = sens.saved_bytes[first]
    drops = sens.layers
    milder = [m for m in saved if saved[m] < saved[label]]
    harsher = [h for h in saved if saved[h] > saved[label]]
    out: list[Swap] = []
    for m in milder:
        for h in harsher:
            if saved[h] - saved[label] < saved[label] - saved[m]:
                continue  # the pair would add bytes
            ups = sorted(units, key=lambda u: drops[u][m] - drops[u][label])  # most gain first
            downs = sorted(units, key=lambda u: drops[u][h] - drops[u][label])  # least loss first
            used: set[str] = set()
            for up in ups:
                down = next((d for d in downs if d != up and d not in used), None)
                if up in used or down is None:
                    continue
                score = (drops[up][label] - drops[up][m]) - (drops[down][h] - drops[down][label])
                if score <= 0:
                    break
                used |= {up, down}
                out.append((score, up, m, down, h))
    return out


def swap_params(space: Any, sens: Any, info: Any, counts: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Label ("sensitivity swaps=4 quantize bits=3") -> Optuna params of each uniform baseline with its `counts`
    best swaps (module docstring). A count beyond the swaps found takes them all; repeats are left out."""
    from autocompress.evaluators.size import plan_size
    from autocompress.search.seeding.sensitivity import measured_choices, plan_params

    choices = measured_choices(space)
    alone = single_unit_layers(space, choices, sens)
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for baseline, plan in space.uniform_plans().items():
        at = baseline_labels(plan, alone)
        shapes: dict[tuple, list[str]] = defaultdict(list)
        for unit, (tech, label) in at.items():
            shapes[(tech, label, json.dumps(sens.saved_bytes[unit], sort_keys=True))].append(unit)
        swaps = sorted((s for (_, label, _), units in shapes.items() if len(units) > 1
                        for s in best_swaps(units, label, sens)), reverse=True)
        limit = plan_size(plan, info).total_bytes
        for k in sorted(set(counts)):
            chosen = {(unit, tech): choices[label][1] for unit, (tech, label) in at.items()}
            used: set[str] = set()
            taken = 0
            for _, up, m, down, h in swaps:
                if taken == k:
                    break
                if up in used or down in used:
                    continue
                used |= {up, down}
                chosen[(up, at[up][0])], chosen[(down, at[down][0])] = choices[m][1], choices[h][1]
                taken += 1
            if not taken:
                continue
            params, swapped = plan_params(space, chosen)
            key = json.dumps(params, sort_keys=True, default=str)
            if key in seen or plan_size(swapped, info).total_bytes > limit:
                continue
            seen.add(key)
            out[f"sensitivity swaps={taken} {baseline}"] = params
    return out
