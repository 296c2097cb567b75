"""Per-layer sensitivity: how much quality one decision unit loses when it alone is compressed, measured once
per search space, cached in the run directory, and used to seed the study with good starting plans.

Reference plan: every unit at its mildest setting (off where the space offers off: bits None, sparsity 0,
dense, rank None, act_bits None; otherwise the least compressing choice, e.g. 8 bits when bits is [4, 8]).
For each unit and each measured choice (`measured_choices`: each compressing choice of a technique's main
field, `ConfigSpace.main_choices`, once per combination of the format fields, group size, symmetric and
activation bits, where the space offers several; e.g. "quantize bits=4 group_size=128 act_bits=None"), the
plan that changes only that unit is run on the search's own backend and evaluator. Every other unit keeps its
activations unquantized where the space offers that.
drop = quality(reference) - quality(plan) for a maximized quality metric (fidelity, accuracy), the other
way round for perplexity: positive means worse.

Seeding (`seed_params`): for each threshold t, every unit takes, per technique, the choice that saves the
most bytes among those whose own drop is <= t (else its mildest setting). Small t gives a safe plan, large
t an aggressive one (between choices saving as much, the one of least drop); the sampler starts from these
instead of from nothing. `search/seeding/allocation.py` seeds one more plan per uniform baseline from the same file.

File `RUN_DIR/sensitivity.json`: {"metric", "reference", "fingerprint", "seconds", "evaluations",
"layers": {unit: {label: drop}}, "saved_bytes": {unit: {label: bytes saved vs the reference}}}.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from autocompress.config import SearchConfig, parse_objective
from autocompress.objectives import TASK_QUALITY

if TYPE_CHECKING:
    from autocompress.search.workers.backends import Backend

QUALITY = {"fidelity": "maximize", "accuracy": "maximize", "perplexity": "minimize", "perplexity_ratio": "minimize",
           "kl": "minimize", "kl_p99": "minimize", "top1_agreement": "maximize"}
_MAIN = {"bits", "sparsity", "pattern", "rank"}
_MILD = _MAIN | {"act_bits"}  # fields a plan not told otherwise takes at their mildest setting
_FORMATS = {"quantize": ("group_size", "symmetric", "act_bits"), "embeddings": ("group_size", "symmetric")}
FILE = "sensitivity.json"
VERSION = 2  # of what is measured (2: format combinations, activations off in the reference): fingerprinted


@dataclass
class Sensitivity:
    metric: str
    reference: float
    fingerprint: str
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    saved_bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    evaluations: int = 0

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Sensitivity":
        return cls(**json.loads(Path(path).read_text()))


def quality_metric(config: SearchConfig, task: str) -> str:
    """The first objective that measures quality, else the task's own quality metric."""
    for text in config.objectives:
        metric = parse_objective(text)[1]
        if metric in QUALITY:
            return metric
    return TASK_QUALITY[task]


def fingerprint(config: SearchConfig, metric: str) -> str:
    """What the measurement depends on: model, data, space and metric (not the budget or sampler)."""
    keys = {"model": config.model.model_dump(mode="json"), "data": config.data.model_dump(mode="json"),
            "space": config.space.model_dump(mode="json"), "metric": metric, "version": VERSION}
    if config.target_format is not None:  # the format narrows the plans measured (older caches keep their key)
        keys["format"] = config.target_format
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _mildest(field_name: str, choices: Sequence[Any]) -> Any:
    off = {"bits": None, "rank": None, "sparsity": 0.0, "pattern": "dense", "act_bits": None}
    if field_name in off and off[field_name] in choices and not any(c is True or c is False for c in choices):
        return off[field_name]
    if field_name == "pattern":
        return "unstructured" if "unstructured" in choices else choices[0]
    numeric = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if field_name in ("bits", "rank") and numeric:
        return max(numeric)
    if field_name == "sparsity" and numeric:
        return min(numeric)
    return choices[0]


def single_unit_plan(space: Any, target: str | None, want: dict[str, Any]) -> tuple[dict, Any]:
    """(params, plan) with unit `target` at `want` and every other decision at its mildest setting (target
    None: the reference plan)."""
    def pick(unit: str, field_name: str, choices: Sequence[Any]) -> Any:
        if unit == target and field_name in want and want[field_name] in choices:
            return want[field_name]
        return _mildest(field_name, choices) if field_name in _MILD else choices[0]

    return space.replay(pick)


def measured_choices(space: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """Label -> (technique, {field: value}) of every choice measured per unit (module docstring): the labels
    of `ConfigSpace.main_choices`, with " field=value" added for each format field of several choices."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for label, (tech, want) in space.main_choices().items():
        section = getattr(space.space, tech, None)
        bits = want.get("bits")
        formats = []  # (shown name, param field, choices as target.format allows)
        for f in _FORMATS.get(tech, ()):
            if f == "group_size" and bits is not None:  # a choice per bit width, or one list
                formats.append((f, section.group_field(bits), space.formats.of(f, section.group_sizes(bits), bits)))
            elif f != "group_size":
                formats.append((f, f, space.formats.of(f, getattr(section, f, ()), bits)))
        formats = [f for f in formats if len(f[2]) > 1]
        for values in itertools.product(*(choices for _, _, choices in formats)):
            extra = {field: v for (_, field, _), v in zip(formats, values)}
            shown = "".join(f" {name}={v}" for (name, _, _), v in zip(formats, values))
            out[label + shown] = (tech, {**want, **extra})
    return out


def plan_params(space: Any, chosen: dict[tuple[str, str], dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    """(Optuna params, plan) where each (unit, technique) of `chosen` takes its {field: value} and every other
    decision its mildest setting (`_MILD` fields) or first choice."""
    def pick(unit: str, field_name: str, options: Sequence[Any]) -> Any:
        for (u, _tech), want in chosen.items():
            if u == unit and field_name in want and want[field_name] in options:
                return want[field_name]
        return _mildest(field_name, options) if field_name in _MILD else options[0]

    return space.replay(pick)


def jobs(space: Any) -> dict[tuple[str, str], Any]:
    """(unit, label) -> the plan that compresses only that unit with that choice (and the reference plan
    under ("", "reference")). A choice that is the unit's mildest setting is the reference: left out."""
    reference = single_unit_plan(space, None, {})[1]
    out = {("", "reference"): reference}
    for label, (tech, want) in measured_choices(space).items():
        for unit in space.technique_units.get(tech, {}):
            plan = single_unit_plan(space, unit, want)[1]
            if plan != reference:  # a choice that is the mildest setting itself changes nothing
                out[(unit, label)] = plan
    return out


def measure(config: SearchConfig, backend: Backend, info: Any, space: Any,
            progress: Callable[[int, int], None] | None = None) -> Sensitivity:
    """Run every single-unit plan of `jobs(space)` on the started `backend` and return the drops. Plans that
    fail are left out (their unit keeps only the choices that ran)."""
    from autocompress.evaluators.size import plan_size

    metric = quality_metric(config, info.task)
    sign = 1.0 if QUALITY[metric] == "maximize" else -1.0
    todo = jobs(space)
    keys = list(todo)
    start = time.perf_counter()
    results: dict[tuple[str, str], float] = {}
    pending = list(enumerate(keys))
    done = 0
    while pending or backend.in_flight():
        while pending and backend.in_flight() < backend.capacity:
            number, key = pending.pop(0)
            backend.submit(number, todo[key].to_json(indent=None))
        for number, outcome in backend.collect():
            done += 1
            if outcome.error is None and metric in outcome.metrics:
                results[keys[number]] = outcome.metrics[metric]
            if progress:
                progress(done, len(keys))
    if ("", "reference") not in results:
        from autocompress.errors import UserError

        raise UserError("sensitivity: the reference plan (every unit at its mildest setting) failed to evaluate")
    reference = results.pop(("", "reference"))
    ref_bytes = plan_size(todo[("", "reference")], info).total_bytes
    sens = Sensitivity(metric, reference, fingerprint(config, metric), evaluations=len(keys))
    for (unit, label), value in results.items():
        sens.layers.setdefault(unit, {})[label] = round(sign * (reference - value), 8)
        sens.saved_bytes.setdefault(unit, {})[label] = ref_bytes - plan_size(todo[(unit, label)], info).total_bytes
    sens.seconds = time.perf_counter() - start
    return sens


def seed_params(space: Any, sens: Sensitivity, thresholds: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Label -> Optuna params of one seeded plan per threshold (module docstring); duplicates dropped."""
    choices = measured_choices(space)
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for t in sorted(thresholds):
        chosen: dict[tuple[str, str], dict[str, Any]] = {}  # (unit, technique) -> want
        rank: dict[tuple[str, str], tuple[int, float]] = {}  # its (saved bytes, -drop)
        for unit, drops in sens.layers.items():
            for label, drop in drops.items():
                tech, want = choices.get(label, (None, None))
                saved = sens.saved_bytes.get(unit, {}).get(label, 0)
                if tech is None or drop > t or saved <= 0:
                    continue
                if (unit, tech) not in rank or (saved, -drop) > rank[(unit, tech)]:
                    chosen[(unit, tech)], rank[(unit, tech)] = want, (saved, -drop)
        params, plan = plan_params(space, chosen)
        key = json.dumps(params, sort_keys=True, default=str)
        if plan.is_empty or key in seen:
            continue
        seen.add(key)
        out[f"sensitivity drop<={t:g}"] = params
    return out


def load_or_measure(config: SearchConfig, backend: Backend, info: Any, space: Any, run_dir: Path,
                    progress: Callable[[int, int], None] | None = None) -> tuple[Sensitivity, bool]:
    """The cached measurement in `run_dir` when its fingerprint matches this config, else a new one (saved).
    Returns (sensitivity, measured_now)."""
    path = Path(run_dir) / FILE
    metric = quality_metric(config, info.task)
    if path.is_file():
        try:
            cached = Sensitivity.load(path)
            if cached.fingerprint == fingerprint(config, metric):
                return cached, False
        except (ValueError, TypeError, KeyError):
            pass  # unreadable or from another version: measure again
    sens = measure(config, backend, info, space, progress)
    sens.save(path)
    return sens, True
