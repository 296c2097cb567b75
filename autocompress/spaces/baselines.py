"""The uniform baselines of a `ConfigSpace`: one plan per compressing choice of each technique's main field.

Each baseline sets one choice on every unit of its technique, the other fields at their first choice (a unit
whose filtered ranks lack the rank is left unfactorized). "quantize bits=b" also puts the embedding tables at
b bits when b is among space.embeddings' choices (else leaves them alone): uniform means every quantizable
weight. When `quantize.act_bits` offers more than one choice, each weight-bit baseline comes once per
activation format ("quantize bits=4 act_bits=8", "quantize bits=4 act_bits=None"): whether activations are
quantized decides which kernel runs (faster) and what it costs in fidelity (more), so the study starts from
every uniform format, not only the first choice's. Embedding-only baselines exist only when the space has no
quantize section; `main_choices` (what sensitivity measures) always lists the embedding choices. The KV cache
and the vocabulary give one baseline per bits choice below 16 and per share below 1 (spaces/kv_cache.py,
spaces/vocab.py); depth gives none, and every baseline drops nothing and does not distill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.spaces.draws import FIELDS, TECHNIQUES, build_plan

if TYPE_CHECKING:
    from autocompress.spaces.config_space import ConfigSpace

COMPANIONS = {"quantize": ("quantize", "embeddings")}  # techniques a uniform baseline of the key also sets
Wanted = dict[str, tuple[str, dict[str, Any]]]  # label -> (technique, {field: value})


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _wanted_or_off(value: Any, choices: Sequence[Any]) -> Any:
    """A uniform baseline's value for one field: the wanted one, else None (off) if that is a choice, else the
    first choice (a unit of a companion technique that cannot take the baseline's value)."""
    if value in choices:
        return value
    return None if None in choices else choices[0]


def uniform_plans(cs: ConfigSpace) -> dict[str, CompressionPlan]:
    """Label -> plan of each uniform baseline that changes something (see `ConfigSpace.uniform_plans`)."""
    plans = {}
    for label, (tech, want) in uniform_wanted(cs).items():
        def pick(unit: str, field: str, choices: Sequence[Any], want=want) -> Any:
            if field in want:
                return _wanted_or_off(want[field], choices)
            return choices[0]

        plan = build_plan(cs, pick, COMPANIONS.get(tech, (tech,)), distill=False)
        if not plan.is_empty:
            plans[label] = plan
    return plans


def uniform_params(cs: ConfigSpace) -> dict[str, dict[str, Any]]:
    """Label -> the Optuna params of each uniform baseline in the joint space (see `ConfigSpace.uniform_params`),
    recorded by replaying `build_plan`, so `sample` on these params gives exactly these plans."""
    off_values = (None, 0.0, "dense")
    out: dict[str, dict[str, Any]] = {}
    for name, (tech, want) in uniform_wanted(cs).items():
        techs = COMPANIONS.get(tech, (tech,))
        own = {u for t in techs for u in cs.technique_units.get(t, {})}
        if "kv_cache" in techs and cs.kv is not None:
            own |= {*cs.kv.units, "kv_cache"}
        if "vocab" in techs and cs.vocab is not None:
            own |= set(cs.vocab.units)
        fields_ = set().union(*(FIELDS[t] for t in techs))
        params: dict[str, Any] = {}

        def pick(unit: str, field: str, choices: Sequence[Any], own=own, want=want, params=params,
                 fields_=fields_) -> Any:
            mine = unit in own and field in fields_  # unit names repeat across techniques
            if mine and field in want:
                value = _wanted_or_off(want[field], choices)
            elif not mine and field in ("bits", "sparsity", "pattern", "rank", "steps"):
                value = next((c for c in choices if c in off_values and type(c) is not bool), choices[0])
            else:
                value = choices[0]
            if len(choices) > 1:
                params[f"{unit}.{field}"] = value
            return value

        build_plan(cs, pick, TECHNIQUES)
        out[name] = params
    return out


def uniform_wanted(cs: ConfigSpace, all_embeddings: bool = False, formats: bool = True,
                   kv: bool = True) -> Wanted:
    """Label -> (technique, the one choice of its main field) for each uniform baseline (with
    `all_embeddings`, also the embedding choices a quantize baseline already covers; with `formats`, each
    weight-bit choice once per activation choice when act_bits has several; with `kv`, the KV-cache bits and
    the vocabulary shares)."""
    sp, wanted, of = cs.space, [], cs.formats.of
    if sp.quantize:
        act_bits = of("act_bits", sp.quantize.act_bits)
        per_format = formats and len(act_bits) > 1
        for b in (b for b in of("bits", sp.quantize.bits) if b is not None):
            if per_format:
                wanted += [("quantize", {"bits": b, "act_bits": a}) for a in act_bits]
            else:
                wanted.append(("quantize", {"bits": b}))
    if sp.embeddings and (all_embeddings or not sp.quantize):
        wanted += [("embeddings", {"bits": b}) for b in of("bits", sp.embeddings.bits) if b is not None]
    if sp.prune:
        for p in sp.prune.pattern:
            if p == "unstructured":
                wanted += [("prune", {"sparsity": s, "pattern": p}) for s in sp.prune.sparsity if s > 0]
            else:  # N:M: the pattern implies the sparsity
                wanted.append(("prune", {"sparsity": LayerPlan(pattern=p).sparsity, "pattern": p}))
    if sp.structured:
        wanted += [("structured", {"sparsity": s}) for s in sp.structured.sparsity if s > 0]
    if sp.lowrank:
        wanted += [("lowrank", {"rank": r}) for r in sp.lowrank.rank if r is not None]
    if kv and cs.kv is not None:
        wanted += cs.kv.baselines()
    if kv and cs.vocab is not None:
        wanted += cs.vocab.baselines()
    return {f"{tech} " + " ".join(f"{k}={_fmt(v)}" for k, v in want.items()): (tech, want)
            for tech, want in wanted}
