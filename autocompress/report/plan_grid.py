"""A compression plan as a grid of numbers and cell texts: one row per layer, one column per setting.

Both heat maps (the PNG and the HTML one) draw a `PlanGrid`. Rows are layers in natural order (block
index, then name); structure keys (attention heads, FFN neurons) get rows of their own, filled only in the
"units removed" column. A cell the plan leaves alone has value None and text "-". Each `Column` has its
own scale: `strength` maps a value onto 0..1 where 1 is the strongest compression on that scale. A plan's
quantized KV cache (`kv_cache`) fills the "KV-cache bits" column on the rows of the layers whose outputs each
block caches (k/v projections, GPT-2's fused c_attn), at that block's bits. A pruned vocabulary (`vocab`)
fills the "vocab kept" column on the rows of the token table and the LM head, with the share of rows kept.
Dropped blocks (`drop_blocks`) fill the "block dropped" column on every layer row of those blocks (needs `info`,
which knows each layer's block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.report.labels import natural_key
from autocompress.vocab.plan import lm_head, token_table, vocab_size


def vocab_tables(info: Any) -> list[str]:
    """The token table and LM head of the model of `info` (the rows a pruned vocabulary shrinks)."""
    return [n for n in (token_table(info), lm_head(info)) if n is not None]


@dataclass(frozen=True)
class Column:
    key: str
    title: str  # column header
    scale: str  # colour-bar label
    vmin: float
    vmax: float
    low_is_strong: bool  # fewer bits / a lower rank fraction compress more
    cmap: str
    ticks: tuple[float, ...]

    def strength(self, value: float) -> float:
        """0 (mildest) .. 1 (strongest compression) on this column's scale, clipped."""
        x = (value - self.vmin) / (self.vmax - self.vmin)
        x = min(1.0, max(0.0, x))
        return 1.0 - x if self.low_is_strong else x


COLUMNS = {
    "bits": Column("bits", "weight bits", "bits per\nweight", 2, 8, True, "Blues", (2, 4, 6, 8)),
    "act_bits": Column("act_bits", "act bits", "bits per\nactivation", 2, 11, True, "Reds", (2, 4, 8)),
    "sparsity": Column("sparsity", "sparsity", "share of\nweights removed", 0, 0.95, False, "Oranges",
                       (0, 0.5, 0.95)),
    "rank": Column("rank", "rank fraction", "rank /\nmin(in, out)", 0, 1, True, "Greens", (0, 0.5, 1)),
    "units": Column("units", "units removed", "share of heads\nor neurons removed", 0, 0.95, False, "Purples",
                    (0, 0.5, 0.95)),
    "kv_bits": Column("kv_bits", "KV-cache bits", "bits per\ncached value", 2, 16, True, "Greys", (2, 4, 8, 16)),
}
COLUMNS["vocab"] = Column("vocab", "vocab kept", "share of\ntokens kept", 0, 1, True, "YlOrBr", (0, 0.5, 1))
COLUMNS["dropped"] = Column("dropped", "block dropped", "block\nremoved", 0, 1, False, "RdPu", (0, 1))
KV_ROLES = ("k_proj", "v_proj", "key", "value", "c_attn")  # the layers whose outputs a block caches


@dataclass
class PlanGrid:
    rows: list[str]  # row labels: layer names, structure rows suffixed " [heads]" / " [neurons]"
    columns: list[Column]
    values: list[list[float | None]]  # [row][column]
    texts: list[list[str]]

    def __len__(self) -> int:
        return len(self.rows)


def plan_grid(plan: CompressionPlan, info: Any = None, space: Any = None) -> PlanGrid:
    """The grid for `plan`. `info` (a `ModelInfo`, optional) adds the layers the plan leaves alone and turns
    absolute ranks into fractions; `space` (the config's `SpaceSection`, optional) decides which columns
    appear besides those the plan uses."""
    structures = dict(getattr(info, "structures", {}) or {})
    is_structure = {k for k, p in plan.layers.items() if p.pattern == "structured"} | set(structures)
    names = set(plan.layers)
    if info is not None:
        names |= set(info.targets_by_default())
    keys = _columns(plan, space)
    if "units" in keys:
        names |= {s for s, st in structures.items() if st.block is not None}
    if "vocab" in keys and info is not None:
        names |= set(vocab_tables(info))
    rows, values, texts = [], [], []
    for name in sorted(names, key=natural_key):
        entry = plan.layers.get(name, LayerPlan())
        if name in is_structure:
            kind = structures[name].kind if name in structures else "units"
            rows.append(f"{name} [{kind}]")
            cells = {"units": _units(entry, structures.get(name))}
        else:
            rows.append(name)
            layer = info.layers.get(name) if info is not None else None
            cells = {"bits": _bits(entry), "act_bits": _act(entry), "sparsity": _sparsity(entry),
                     "rank": _rank(entry, layer), "kv_bits": _kv(plan, layer), "vocab": _vocab(plan, name, info),
                     "dropped": _dropped(plan, layer)}
        values.append([cells.get(k, (None, "-"))[0] for k in keys])
        texts.append([cells.get(k, (None, "-"))[1] for k in keys])
    return PlanGrid(rows, [COLUMNS[k] for k in keys], values, texts)


def _columns(plan: CompressionPlan, space: Any) -> list[str]:
    used = set()
    for p in plan.layers.values():
        if p.pattern == "structured":
            used.add("units")
            continue
        used |= {k for k, on in (("bits", p.bits is not None), ("act_bits", p.act_bits is not None),
                                 ("sparsity", p.prunes), ("rank", p.factorizes)) if on}
    if space is not None:
        q = space.quantize
        tables = getattr(space, "embeddings", None)
        used |= {k for k, on in (("bits", q is not None or tables is not None),
                                 ("act_bits", q is not None and 8 in q.act_bits),
                                 ("sparsity", space.prune is not None), ("rank", space.lowrank is not None),
                                 ("units", space.structured is not None)) if on}
    if plan.kv_cache is not None or getattr(space, "kv_cache", None) is not None:
        used.add("kv_bits")
    if plan.vocab is not None or getattr(space, "vocab", None) is not None:
        used.add("vocab")
    if plan.drop_blocks or getattr(space, "depth", None) is not None:
        used.add("dropped")
    return [k for k in COLUMNS if k in used] or ["bits"]


Cell = tuple[float | None, str]


def _bits(p: LayerPlan) -> Cell:
    if p.bits is None:
        return None, "-"
    group = "ch" if p.group_size is None else f"g{p.group_size}"
    return float(p.bits), f"{p.bits} {group}"


def _act(p: LayerPlan) -> Cell:
    return (None, "-") if p.act_bits is None else (float(p.act_bits), f"int{p.act_bits}")


def _sparsity(p: LayerPlan) -> Cell:
    if not p.prunes:
        return None, "-"
    return p.sparsity, p.pattern if p.n_m else f"{p.sparsity:.0%}"


def _rank(p: LayerPlan, layer: Any) -> Cell:
    if p.rank is None:
        return None, "-"
    if isinstance(p.rank, float):
        return p.rank, f"{p.rank:.0%}"
    if layer is None:
        return None, f"r{p.rank}"
    frac = p.rank / min(layer.in_features, layer.out_features)
    return frac, f"r{p.rank} {frac:.0%}"


def _kv(plan: CompressionPlan, layer: Any) -> Cell:
    if plan.kv_cache is None or layer is None or layer.block is None or not layer.name.endswith(KV_ROLES):
        return None, "-"
    bits = plan.kv_cache.bits_for(layer.block)
    return (None, "16") if bits == 16 else (float(bits), f"kv {bits}")


def _vocab(plan: CompressionPlan, name: str, info: Any) -> Cell:
    if plan.vocab is None or info is None or name not in vocab_tables(info):
        return None, "-"
    share = plan.vocab.rows(vocab_size(info)) / vocab_size(info)
    return share, f"{share:.0%}"


def _dropped(plan: CompressionPlan, layer: Any) -> Cell:
    if layer is None or layer.block is None or layer.block not in plan.drop_blocks:
        return None, "-"
    return 1.0, f"block {layer.block}"


def _units(p: LayerPlan, structure: Any) -> Cell:
    if not p.prunes:
        return None, "-"
    if structure is None:
        return p.sparsity, f"{p.sparsity:.0%}"
    removed = min(round(p.sparsity * structure.units), structure.units - 1)
    return p.sparsity, f"{removed}/{structure.units}"
