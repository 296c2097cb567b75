"""How one plan is drawn from a `ConfigSpace`: the params, and the order and conditions of every decision.

Optuna params are named `"<unit>.<field>"` with the `LayerPlan` field names: bits, group_size, symmetric,
quant_method, kmeans_weighting, act_bits, smooth, sparsity, pattern, prune_method, rank, rank_method; all are
categorical over the config's choices (None kept as None). A field with a single choice is a constant and is
never suggested, so the sampler sees only real decisions. Conditional (define-by-run), in this order per trial:
  lowrank    rank (choices filtered per unit, spaces/choices.py); rank_method only when the rank is not None.
  quantize   bits; group_size (or group_size_<b>bit, see config_sections._GroupedBits), symmetric,
             quant_method only when bits is not None; kmeans_weighting only when quant_method is kmeans
             (`quantize.kmeans_weighting`; the default ["none"] is a constant); act_bits always; smooth
             (SmoothQuant's alpha, `quantize.smooth`) only when act_bits is 8 and some layer of the unit can
             be smoothed (only those get it: not a factorized layer, nor one whose weight an embedding
             table shares, such as a tied lm_head). The default [null]
             is a constant, so configs without `smooth` draw exactly the params they drew before; the
             uniform baselines take the first choice.
  embeddings bits; group_size, symmetric only when bits is not None (always RTN).
  prune      skipped for a unit's layers that got a rank (a sparse matrix's factors are dense); then
             pattern, then for "unstructured" the sparsity among the config's choices; an N:M pattern
             implies sparsity 1 - N/M. When 0.0 is a sparsity choice but "unstructured" is not a pattern,
             the pattern choices gain a leading "dense" (leave the unit alone) and the other sparsity
             values are unused. prune_method only when the sparsity is > 0.
  structured per structure: sparsity; prune_method only when > 0. Composes with every other technique.
  distill    after the layers, one plan-level decision (`space.distill`, params "distill.<field>"): steps; lr,
             temperature, alpha, beta, layers only when steps > 0; batch_size, max_length, eval_every and
             seed are constants. The uniform baselines take steps 0 when 0 is a choice (no distillation).
  kv_cache   last, plan-level (`space.kv_cache`, spaces/kv_cache.py): bits once
             (`kv_cache.bits`) or per block (`kv_cache.block<i>.bits`); group_size, symmetric only when some
             block is below 16 bits. Its uniform baselines: one per bits choice below 16.
  vocab      after kv_cache, plan-level (`space.vocab`, spaces/vocab.py): `vocab.keep`, the share of the
             vocabulary kept. Its uniform baselines: one per share below 1.
  depth      last, plan-level (`space.depth`, spaces/depth.py): how many blocks to drop (`depth.drop`, in
             Block Influence order) or one switch per block (`depth.block<i>.drop`). No uniform baseline;
             every other baseline drops nothing.
Under a target format (spaces/formats.py) the quantize and embeddings choices are those the format holds, and
under gguf every quantized unit gets its `gguf_type`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Sequence

from autocompress.distill_spec import DistillConfig
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.spaces.depth import FIELDS as DEPTH_FIELDS
from autocompress.spaces.kv_cache import FIELDS as KV_FIELDS
from autocompress.spaces.vocab import FIELDS as VOCAB_FIELDS

if TYPE_CHECKING:
    from autocompress.spaces.config_space import ConfigSpace

# the order decisions are drawn in (kv_cache, vocab and depth, plan-level, after distill: see `build_plan`)
TECHNIQUES = ("lowrank", "quantize", "embeddings", "prune", "structured", "kv_cache", "vocab", "depth")
FIELDS = {"lowrank": {"rank", "rank_method"},
          "quantize": {"bits", "group_size", "symmetric", "quant_method", "kmeans_weighting", "act_bits",
                       "smooth"},
          "embeddings": {"bits", "group_size", "symmetric"},
          "prune": {"pattern", "sparsity", "prune_method"}, "structured": {"sparsity", "prune_method"},
          "kv_cache": KV_FIELDS, "vocab": VOCAB_FIELDS, "depth": DEPTH_FIELDS}
Pick = Callable[[str, str, Sequence[Any]], Any]  # (unit, field, choices) -> value


def build_plan(cs: ConfigSpace, pick: Pick, techniques: Sequence[str], distill: bool = True) -> CompressionPlan:
    """The plan of `cs` when `pick(unit, field, choices)` makes every decision, in the order of the module
    docstring; only the `techniques` named are drawn (the others stay off), distillation only with `distill`."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for tech in TECHNIQUES:
        if tech in techniques and tech in cs.technique_units:
            _LAYER_DRAWS[tech](cs, pick, cs.technique_units[tech], out)
    layers = {name: LayerPlan(**fields) for name, fields in out.items()}
    distilled = draw_distill(cs, pick) if distill else None
    kv = cs.kv.draw(pick) if cs.kv is not None and "kv_cache" in techniques else None
    vocab = cs.vocab.draw(pick) if cs.vocab is not None and "vocab" in techniques else None
    drop = cs.depth.draw(pick) if cs.depth is not None and "depth" in techniques else ()
    layers = cs.depth.kept_entries(layers, drop) if cs.depth is not None else layers
    return CompressionPlan(layers, distill=distilled, kv_cache=kv, vocab=vocab, drop_blocks=drop)


def draw_distill(cs: ConfigSpace, pick: Pick) -> DistillConfig | None:
    """The plan's distillation from `space.distill`, or None without one or when 0 steps are drawn."""
    d = cs.space.distill
    if d is None:
        return None
    steps = pick("distill", "steps", d.choices("steps"))
    if steps == 0:
        return None
    drawn = {f: pick("distill", f, d.choices(f)) for f in ("lr", "temperature", "alpha", "beta", "layers")}
    return DistillConfig(steps=steps, batch_size=d.batch_size, max_length=d.max_length,
                         eval_every=d.eval_every, seed=d.seed, **drawn)


# Each layer technique's draws: (space, pick, its units, the plan entries' fields so far by layer) -> None,
# adding its fields to `out`.
def _lowrank(cs: ConfigSpace, pick: Pick, units: dict, out: dict) -> None:
    for unit, members in units.items():
        rank = pick(unit, "rank", cs.ranks[unit])
        if rank is not None:
            method = pick(unit, "rank_method", cs.space.lowrank.method)
            for name in members:
                out[name].update(rank=rank, rank_method=method)


def _quantize(cs: ConfigSpace, pick: Pick, units: dict, out: dict) -> None:
    q, of = cs.space.quantize, cs.formats.of
    for unit, members in units.items():
        fields: dict[str, Any] = {}
        bits = pick(unit, "bits", of("bits", q.bits))
        if bits is not None:
            fields = dict(bits=bits,
                          group_size=pick(unit, q.group_field(bits), of("group_size", q.group_sizes(bits))),
                          symmetric=pick(unit, "symmetric", of("symmetric", q.symmetric, bits)),
                          quant_method=pick(unit, "quant_method", q.method))
            if fields["quant_method"] == "kmeans":
                fields["kmeans_weighting"] = pick(unit, "kmeans_weighting", q.kmeans_weighting)
            fields.update(cs.formats.fields(bits, fields["symmetric"]))
        fields["act_bits"] = pick(unit, "act_bits", of("act_bits", q.act_bits))
        smoothable = [n for n in members if out[n].get("rank") is None and n not in cs.tied]
        smooth = pick(unit, "smooth", of("smooth", q.smooth)) if fields["act_bits"] == 8 and smoothable else None
        for name in members:
            out[name].update(fields)
            if smooth is not None and name in smoothable:
                out[name]["smooth"] = smooth


def _embeddings(cs: ConfigSpace, pick: Pick, units: dict, out: dict) -> None:
    e, of = cs.space.embeddings, cs.formats.of
    for unit, members in units.items():
        bits = pick(unit, "bits", of("bits", e.bits))
        if bits is None:
            continue
        fields = dict(bits=bits,
                      group_size=pick(unit, e.group_field(bits), of("group_size", e.group_sizes(bits))),
                      symmetric=pick(unit, "symmetric", of("symmetric", e.symmetric, bits)))
        fields.update(cs.formats.fields(bits, fields["symmetric"]))
        for name in members:
            out[name].update(fields)


def _prune(cs: ConfigSpace, pick: Pick, units: dict, out: dict) -> None:
    p = cs.space.prune
    for unit, members in units.items():
        free = [n for n in members if out[n].get("rank") is None]
        if not free:
            continue  # every layer of the unit is factorized: pruning is not on offer
        pattern = pick(unit, "pattern", cs.patterns)
        if pattern == "dense":
            continue
        if pattern == "unstructured":
            sparsity = pick(unit, "sparsity", p.sparsity)
        else:  # N:M: LayerPlan derives 1 - N/M
            sparsity = LayerPlan(pattern=pattern).sparsity
        if sparsity > 0:
            method = pick(unit, "prune_method", p.method)
            for name in free:
                out[name].update(sparsity=sparsity, pattern=pattern, prune_method=method)


def _structured(cs: ConfigSpace, pick: Pick, units: dict, out: dict) -> None:
    st = cs.space.structured
    for unit in units:
        sparsity = pick(unit, "sparsity", st.sparsity)
        if sparsity > 0:
            out[unit] = dict(sparsity=sparsity, pattern="structured",
                             prune_method=pick(unit, "prune_method", st.method))


_LAYER_DRAWS = {"lowrank": _lowrank, "quantize": _quantize, "embeddings": _embeddings, "prune": _prune,
                "structured": _structured}
