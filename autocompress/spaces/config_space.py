"""`ConfigSpace`: the search space that a config's `space:` section describes, per decision unit.

Decision units. Each technique picks its layers with its own `targets`/`ignore` (`select_layers`; default:
the Linear layers inside the blocks). With `share: group`, layers of one `ModelInfo.groups` group (q/k/v,
gate/up) that are all selected form ONE unit named by the group (`encoder.layer.0.attention.self.qkv`) and
share its settings; every other layer is a unit of its own. With `share: layer` every layer is its own unit.
Structured pruning decides per structure (heads or FFN neurons); grouped-query attention heads are left out
(they cannot be pruned). `space.embeddings` picks embedding tables (`select_embeddings`; default: every table),
each table its own unit, named by the table, whatever `share` says: tables differ too much to share a setting
(alone at 4 bits, MiniLM's 2 x 384 token-type table costs more fidelity than its 30522 x 384 word table:
benchmarks/results/uniform_corners.md). A table tied to a Linear (SmolLM2's `model.embed_tokens` and `lm_head`,
GPT-2's `transformer.wte`) is such a unit too, still named (and its params named) by the table, but its plan
entry goes on the Linear (`lm_head`): that weight is the table, [vocab, hidden] in both, so quantizing the
Linear quantizes the table and a group along the Linear's inputs is a group along each token's vector. A space
whose quantize or lowrank section also selects that Linear is refused (one weight, two decisions).

Optuna params are named `"<unit>.<field>"` with the `LayerPlan` field names: bits, group_size, symmetric,
quant_method, kmeans_weighting, act_bits, smooth, sparsity, pattern, prune_method, rank, rank_method; all are
categorical over the config's choices (None kept as None). A field with a single choice is a constant and is
never suggested, so the sampler sees only real decisions. Conditional (define-by-run), in this order per trial:
  lowrank    rank (choices filtered per unit, see below); rank_method only when the rank is not None.
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
Uniform baselines: one per compressing choice of each technique's main field. "quantize bits=b" also puts
the embedding tables at b bits when b is among space.embeddings' choices (else leaves them alone): uniform
means every quantizable weight. When `quantize.act_bits` offers more than one choice, each weight-bit baseline
comes once per activation format ("quantize bits=4 act_bits=8", "quantize bits=4 act_bits=None"): whether
activations are quantized decides which kernel runs (faster) and what it costs in fidelity (more), so the
study starts from every uniform format, not only the first choice's. Embedding-only baselines exist only
when the space has no quantize section;
`main_choices` (what sensitivity measures) always lists the embedding choices.
Rank filtering: a rank choice stays in a unit's choices only if, for every layer of the unit, the resolved
rank does not exceed the break-even in*out // (in+out), also at each shape that structured pruning in this
space can shrink the layer to; so a rank never grows a layer. The filter depends only on shapes and config,
so each param's choices are the same in every trial. If only None remains, nothing is suggested.
Target format: with `target.format` (e.g. gguf) the quantize and embeddings choices are narrowed to what that
format holds and the techniques it cannot hold are refused (spaces/formats.py); under gguf every quantized
unit gets its `gguf_type`.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any, Callable, Sequence

import optuna

from autocompress.config import SpaceSection
from autocompress.distill_spec import DistillConfig
from autocompress.errors import UserError
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan, LayerPlan, resolve_rank
from autocompress.selection import select_embeddings, select_layers
from autocompress.spaces._base import SearchSpace
from autocompress.spaces.formats import FormatChoices, check_space
from autocompress.spaces.depth import FIELDS as DEPTH_FIELDS, DepthChoices
from autocompress.spaces.kv_cache import FIELDS as KV_FIELDS, KVCacheChoices
from autocompress.spaces.vocab import FIELDS as VOCAB_FIELDS, VocabChoices

# the order decisions are drawn in (kv_cache, vocab and depth, plan-level, after distill: see `_build`)
TECHNIQUES = ("lowrank", "quantize", "embeddings", "prune", "structured", "kv_cache", "vocab", "depth")
FIELDS = {"lowrank": {"rank", "rank_method"},
          "quantize": {"bits", "group_size", "symmetric", "quant_method", "kmeans_weighting", "act_bits", "smooth"},
          "embeddings": {"bits", "group_size", "symmetric"},
          "prune": {"pattern", "sparsity", "prune_method"}, "structured": {"sparsity", "prune_method"},
          "kv_cache": KV_FIELDS, "vocab": VOCAB_FIELDS, "depth": DEPTH_FIELDS}
Pick = Callable[[str, str, Sequence[Any]], Any]  # (unit, field, choices) -> value
COMPANIONS = {"quantize": ("quantize", "embeddings")}  # techniques a uniform baseline of the key also sets


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _wanted_or_off(value: Any, choices: Sequence[Any]) -> Any:
    """A uniform baseline's value for one field: the wanted one, else None (off) if that is a choice, else the
    first choice (a unit of a companion technique that cannot take the baseline's value)."""
    if value in choices:
        return value
    return None if None in choices else choices[0]


class ConfigSpace(SearchSpace):
    """The per-unit space of a `SpaceSection` over a model inventory (see the module docstring).
    `target_format` (`target.format`, e.g. "gguf") restricts the choices to what that format holds
    (spaces/formats.py); `UserError` for a space it cannot hold."""

    def __init__(self, space: SpaceSection, info: ModelInfo, target_format: str | None = None) -> None:
        self.space, self.info = space, info
        try:
            check_space(space, target_format)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.formats = FormatChoices(target_format)
        self._check_choices()
        self.technique_units: dict[str, dict[str, tuple[str, ...]]] = {}
        for tech in ("lowrank", "quantize", "prune"):
            sec = getattr(space, tech)
            if sec is not None:
                names = select_layers(info, sec.targets, sec.ignore, where=f"space.{tech}")
                if tech == "quantize":
                    names = self._fitting(names, "space.quantize", lambda n: info.layers[n].in_features)
                self.technique_units[tech] = self._group(names)
        if space.embeddings is not None:
            e = space.embeddings
            tables = self._fitting(select_embeddings(info, e.targets, e.ignore), "space.embeddings",
                                   lambda n: info.embeddings[n].embedding_dim)
            self.technique_units["embeddings"] = self._table_units(tables)
        if space.structured is not None:
            st = space.structured
            names = [n for n in select_layers(info, st.targets, st.ignore, structures=True, where="space.structured")
                     if info.structures[n].kv_groups == 1]
            if not names:
                raise UserError("space.structured: the selected structures are all grouped-query attention heads, "
                                "which cannot be pruned; target the FFN neurons instead")
            self.technique_units["structured"] = {n: (n,) for n in names}
        self._tied = {e.tied_to for e in info.embeddings.values() if e.tied_to is not None}  # never smoothed
        self._ranks = {u: self._fitting_ranks(m) for u, m in self.technique_units.get("lowrank", {}).items()}
        patterns = list(space.prune.pattern) if space.prune else []
        if space.prune and 0.0 in space.prune.sparsity and "unstructured" not in patterns:
            patterns.insert(0, "dense")
        self._patterns = patterns
        self.kv = KVCacheChoices(space.kv_cache, info) if space.kv_cache is not None else None
        self.vocab = VocabChoices(space.vocab, info) if space.vocab is not None else None
        self.depth = DepthChoices(space.depth, info, space.distill) if space.depth is not None else None

    # ---- the contract --------------------------------------------------------------------------------
    @property
    def units(self) -> dict[str, tuple[str, ...]]:
        """Every decision unit of every technique: unit name -> its layers (or structure)."""
        return {u: m for units in self.technique_units.values() for u, m in units.items()}

    def sample(self, trial: optuna.trial.BaseTrial) -> CompressionPlan:
        def pick(unit: str, field: str, choices: Sequence[Any]) -> Any:
            if len(choices) == 1:
                return choices[0]
            return trial.suggest_categorical(f"{unit}.{field}", list(choices))

        return self._build(pick, TECHNIQUES)

    def uniform_plans(self) -> dict[str, CompressionPlan]:
        """One plan per non-trivial choice of each technique's main field, on all its units; the other
        fields at their first choice. A unit whose filtered ranks lack the rank is left unfactorized."""
        plans = {}
        for label, (tech, want) in self._uniform_wanted().items():
            def pick(unit: str, field: str, choices: Sequence[Any], want=want) -> Any:
                if field in want:
                    return _wanted_or_off(want[field], choices)
                return choices[0]

            plan = self._build(pick, COMPANIONS.get(tech, (tech,)), distill=False)
            if not plan.is_empty:
                plans[label] = plan
        return plans

    def uniform_params(self) -> dict[str, dict[str, Any]]:
        """The Optuna params of each uniform baseline in the *joint* space (what `study.enqueue_trial` needs):
        the baseline's technique set to its one choice on every unit, every other technique switched off
        where "off" (null bits or rank, sparsity 0, dense) is among its choices, other fields at their first
        choice. Recorded by replaying `_build`, so `sample` on these params gives exactly these plans."""
        off_values = (None, 0.0, "dense")
        out: dict[str, dict[str, Any]] = {}
        for name, (tech, want) in self._uniform_wanted().items():
            techs = COMPANIONS.get(tech, (tech,))
            own = {u for t in techs for u in self.technique_units.get(t, {})}
            if "kv_cache" in techs and self.kv is not None:
                own |= {*self.kv.units, "kv_cache"}
            if "vocab" in techs and self.vocab is not None:
                own |= set(self.vocab.units)
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

            self._build(pick, TECHNIQUES)
            out[name] = params
        return out

    def replay(self, pick: Pick) -> tuple[dict[str, Any], CompressionPlan]:
        """(Optuna params, plan) of the joint space when `pick(unit, field, choices)` makes every decision:
        the params are what `study.enqueue_trial` needs for `sample` to give exactly this plan. `pick` must
        return one of `choices`."""
        params: dict[str, Any] = {}

        def record(unit: str, field: str, choices: Sequence[Any]) -> Any:
            value = pick(unit, field, choices)
            if value not in choices:
                raise ValueError(f"{unit}.{field}: {value!r} is not among the choices {list(choices)}")
            if len(choices) > 1:
                params[f"{unit}.{field}"] = value
            return value

        return params, self._build(record, TECHNIQUES)

    def main_choices(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Label -> (technique, {field: value}) for every compressing choice of each technique's main field,
        e.g. "quantize bits=4" -> ("quantize", {"bits": 4}) (the uniform baselines use the same labels, plus
        " act_bits=a" when they come once per activation format)."""
        return self._uniform_wanted(all_embeddings=True, formats=False, kv=False)

    def _uniform_wanted(self, all_embeddings: bool = False, formats: bool = True,
                        kv: bool = True) -> dict[str, tuple[str, dict[str, Any]]]:
        """Label -> (technique, the one choice of its main field) for each uniform baseline (with
        `all_embeddings`, also the embedding choices a quantize baseline already covers; with `formats`, each
        weight-bit choice once per activation choice when act_bits has several; with `kv`, the KV-cache bits and
        the vocabulary shares)."""
        sp, wanted, of = self.space, [], self.formats.of
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
        if kv and self.kv is not None:
            wanted += self.kv.baselines()
        if kv and self.vocab is not None:
            wanted += self.vocab.baselines()
        return {f"{tech} " + " ".join(f"{k}={_fmt(v)}" for k, v in want.items()): (tech, want)
                for tech, want in wanted}

    # ---- building ------------------------------------------------------------------------------------
    def _build(self, pick: Pick, techniques: Sequence[str], distill: bool = True) -> CompressionPlan:
        out: dict[str, dict[str, Any]] = defaultdict(dict)
        for tech in TECHNIQUES:
            if tech in techniques and tech in self.technique_units:
                getattr(self, f"_{tech}")(pick, self.technique_units[tech], out)
        layers = {name: LayerPlan(**fields) for name, fields in out.items()}
        distilled = self._distill(pick) if distill else None
        kv = self.kv.draw(pick) if self.kv is not None and "kv_cache" in techniques else None
        vocab = self.vocab.draw(pick) if self.vocab is not None and "vocab" in techniques else None
        drop = self.depth.draw(pick) if self.depth is not None and "depth" in techniques else ()
        layers = self.depth.kept_entries(layers, drop) if self.depth is not None else layers
        return CompressionPlan(layers, distill=distilled, kv_cache=kv, vocab=vocab, drop_blocks=drop)

    def _distill(self, pick: Pick) -> DistillConfig | None:
        d = self.space.distill
        if d is None:
            return None
        steps = pick("distill", "steps", d.choices("steps"))
        if steps == 0:
            return None
        drawn = {f: pick("distill", f, d.choices(f)) for f in ("lr", "temperature", "alpha", "beta", "layers")}
        return DistillConfig(steps=steps, batch_size=d.batch_size, max_length=d.max_length,
                             eval_every=d.eval_every, seed=d.seed, **drawn)

    def _lowrank(self, pick: Pick, units: dict, out: dict) -> None:
        for unit, members in units.items():
            rank = pick(unit, "rank", self._ranks[unit])
            if rank is not None:
                method = pick(unit, "rank_method", self.space.lowrank.method)
                for name in members:
                    out[name].update(rank=rank, rank_method=method)

    def _quantize(self, pick: Pick, units: dict, out: dict) -> None:
        q, of = self.space.quantize, self.formats.of
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
                fields.update(self.formats.fields(bits, fields["symmetric"]))
            fields["act_bits"] = pick(unit, "act_bits", of("act_bits", q.act_bits))
            smoothable = [n for n in members if out[n].get("rank") is None and n not in self._tied]
            smooth = pick(unit, "smooth", of("smooth", q.smooth)) if fields["act_bits"] == 8 and smoothable else None
            for name in members:
                out[name].update(fields)
                if smooth is not None and name in smoothable:
                    out[name]["smooth"] = smooth

    def _embeddings(self, pick: Pick, units: dict, out: dict) -> None:
        e, of = self.space.embeddings, self.formats.of
        for unit, members in units.items():
            bits = pick(unit, "bits", of("bits", e.bits))
            if bits is None:
                continue
            fields = dict(bits=bits,
                          group_size=pick(unit, e.group_field(bits), of("group_size", e.group_sizes(bits))),
                          symmetric=pick(unit, "symmetric", of("symmetric", e.symmetric, bits)))
            fields.update(self.formats.fields(bits, fields["symmetric"]))
            for name in members:
                out[name].update(fields)

    def _prune(self, pick: Pick, units: dict, out: dict) -> None:
        p = self.space.prune
        for unit, members in units.items():
            free = [n for n in members if out[n].get("rank") is None]
            if not free:
                continue  # every layer of the unit is factorized: pruning is not on offer
            pattern = pick(unit, "pattern", self._patterns)
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

    def _structured(self, pick: Pick, units: dict, out: dict) -> None:
        st = self.space.structured
        for unit in units:
            sparsity = pick(unit, "sparsity", st.sparsity)
            if sparsity > 0:
                out[unit] = dict(sparsity=sparsity, pattern="structured",
                                 prune_method=pick(unit, "prune_method", st.method))

    # ---- units and choices ---------------------------------------------------------------------------
    def _group(self, names: list[str]) -> dict[str, tuple[str, ...]]:
        chosen, owner = set(names), {}
        if self.space.share == "group":
            for group, members in self.info.groups.items():
                if set(members) <= chosen and not set(members) & set(owner):
                    owner.update({m: group for m in members})
        units: dict[str, tuple[str, ...]] = {}
        for name in names:
            unit = owner.get(name, name)
            units.setdefault(unit, self.info.groups[unit] if unit in owner.values() else (name,))
        return units

    def _fitting(self, names: list[str], where: str, inputs: Callable[[str], int]) -> list[str]:
        """The selected weights the target format can quantize (all of them without one); `UserError` if none."""
        kept = [n for n in names if self.formats.fits(inputs(n))]
        if names and not kept:
            raise UserError(f"{where}: none of the selected weights has a multiple of 32 inputs, which "
                            f"target.format {self.formats.fmt} needs; select others or drop target.format")
        return kept

    def _table_units(self, tables: list[str]) -> dict[str, tuple[str, ...]]:
        """Each table a unit named by itself, holding itself, or for a table tied to a Linear that Linear (see
        the module docstring). `UserError` when the Linear does not hold the table in its [out, in] layout (a
        group would then run across tokens) or when space.quantize or space.lowrank also selects it."""
        units: dict[str, tuple[str, ...]] = {}
        for name in tables:
            emb = self.info.embeddings[name]
            linear = emb.tied_to
            if linear is None:
                units[name] = (name,)
                continue
            li = self.info.layers[linear]
            if (li.out_features, li.in_features) != (emb.num_embeddings, emb.embedding_dim):
                raise UserError(f"space.embeddings: the table {name!r} is tied to {linear!r}, which holds it "
                                f"transposed ({li.out_features} x {li.in_features}), so its groups would run "
                                f"across tokens; add {name!r} to space.embeddings.ignore and quantize "
                                f"{linear!r} through space.quantize")
            for tech in ("quantize", "lowrank"):
                if any(linear in members for members in self.technique_units.get(tech, {}).values()):
                    raise UserError(f"space.embeddings and space.{tech} both select {linear!r}, which holds the "
                                    f"tied table {name!r} (one weight, two decisions); add {linear!r} to "
                                    f"space.{tech}.ignore, or {name!r} to space.embeddings.ignore (or drop "
                                    "space.embeddings when it is the only table)")
            if (linear,) not in units.values():  # tables sharing one weight (T5's shared/encoder/decoder): one unit
                units[name] = (linear,)
        return units

    def _shapes(self, name: str) -> set[tuple[int, int]]:
        """(out, in) of a layer as it is and after each structured pruning this space can choose."""
        li = self.info.layers[name]
        shapes = {(li.out_features, li.in_features)}
        structured = self.technique_units.get("structured", {})
        for s in (self.info.structures[u] for u in structured):
            if name not in (*s.producers, s.consumer):
                continue
            grown = set()
            for (n_out, n_in), sp in itertools.product(shapes, self.space.structured.sparsity):
                cut = min(round(sp * s.units), s.units - 1) * s.unit_size
                grown.add((n_out - cut * (3 if s.fused_qkv else 1), n_in) if name in s.producers
                          else (n_out, n_in - cut))
            shapes |= grown
        return shapes

    def _fitting_ranks(self, members: tuple[str, ...]) -> list[int | float | None]:
        shapes = set().union(*(self._shapes(n) for n in members))
        ranks = [r for r in self.space.lowrank.rank
                 if r is None or all(resolve_rank(r, o, i) <= o * i // (o + i) for o, i in shapes)]
        return ranks or [None]

    def _check_choices(self) -> None:
        """Choices the config schema lets through but a `LayerPlan` refuses (rank 1.5, pattern 4:2, ...)."""
        sp = self.space
        checks = [("lowrank.rank", dict(rank=r)) for r in (sp.lowrank.rank if sp.lowrank else ())]
        checks += [("quantize.group_size", dict(bits=4, group_size=g))
                   for g in (sp.quantize.all_group_sizes() if sp.quantize else ())]
        checks += [("embeddings.group_size", dict(bits=4, group_size=g))
                   for g in (sp.embeddings.all_group_sizes() if sp.embeddings else ())]
        checks += [("prune.pattern", dict(pattern=p)) for p in (sp.prune.pattern if sp.prune else ())]
        for where, fields in checks:
            try:
                LayerPlan(**fields)
            except UserError as exc:
                raise UserError(f"space.{where}: {exc}") from None
