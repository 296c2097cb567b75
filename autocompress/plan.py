"""The compression plan: what to do to each layer, as immutable, versioned, JSON-exact data.

A `CompressionPlan` maps module names to `LayerPlan`s. Keys are either Linear-like layers
(`encoder.layer.3.intermediate.dense`) or structures (`encoder.layer.3.attention.self` for attention heads,
`encoder.layer.3.intermediate` for FFN neurons) as listed by `ModelInfo`. A plan never touches weights:
it is cheap to build, compare, hash, log and send to a worker. One layer's settings (`LayerPlan`) live in
layer_plan.py and are re-exported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from autocompress.distill_spec import DistillConfig
from autocompress.errors import UserError
from autocompress.depth import plan as depth_plan
from autocompress.kvcache.plan import KVCachePlan
from autocompress.layer_plan import (GGUF_BLOCK, GGUF_TYPES, KMEANS_WEIGHTINGS, MAX_SPARSITY, PRUNE_METHODS,
                                     QUANT_METHODS, RANK_METHODS, LayerPlan, gguf_type_of, resolve_rank)
from autocompress.vocab.plan import VocabPlan

__all__ = ["PLAN_VERSION", "CompressionPlan", "LayerPlan", "GGUF_BLOCK", "GGUF_TYPES", "KMEANS_WEIGHTINGS",
           "MAX_SPARSITY", "PRUNE_METHODS", "QUANT_METHODS", "RANK_METHODS", "gguf_type_of",
           "resolve_rank"]  # layer_plan's too

PLAN_VERSION = 1


@dataclass(frozen=True, eq=False)
class CompressionPlan:
    """Per-layer settings keyed by module name. Immutable; entries that change nothing are dropped.

    `to_json`/`from_json` round-trip exactly (floats as repr). `version` guards against reading a plan
    written by a newer autocompress. `distill` (optional, plan-level): knowledge distillation run after the
    layers are compressed (`autocompress.distill.apply_and_distill`); a config with 0 steps is dropped like a
    no-op layer, and the JSON key "distill" is written only when set (plans without it read and write as before).
    `kv_cache` (optional, plan-level): the KV cache's quantization (`autocompress.kvcache.KVCachePlan`); one
    with every block at 16 bits is dropped, and the JSON key "kv_cache" is written only when set.
    `vocab` (optional, plan-level): the token ids a pruned vocabulary keeps (`autocompress.vocab.VocabPlan`);
    one that keeps every token is dropped, and the JSON key "vocab" is written only when set.
    `drop_blocks` (optional, plan-level): whole transformer blocks removed (`autocompress.depth`), original
    indices as a sorted tuple; entries of layers in those blocks are ignored. JSON key "drop_blocks" only when set.
    """

    layers: Mapping[str, LayerPlan]
    version: int = PLAN_VERSION
    distill: DistillConfig | None = None
    kv_cache: KVCachePlan | None = None
    vocab: VocabPlan | None = None
    drop_blocks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name, lp in self.layers.items():
            if not isinstance(lp, LayerPlan):
                raise TypeError(f"plan layer {name!r}: expected LayerPlan, got {type(lp).__name__}")
        kept = {k: self.layers[k] for k in sorted(self.layers) if not self.layers[k].is_noop}
        object.__setattr__(self, "layers", MappingProxyType(kept))
        if self.distill is not None and not isinstance(self.distill, DistillConfig):
            raise TypeError(f"plan distill: expected DistillConfig or None, got {type(self.distill).__name__}")
        if self.distill is not None and not self.distill.enabled:
            object.__setattr__(self, "distill", None)
        if self.kv_cache is not None and not isinstance(self.kv_cache, KVCachePlan):
            raise TypeError(f"plan kv_cache: expected KVCachePlan or None, got {type(self.kv_cache).__name__}")
        if self.kv_cache is not None and self.kv_cache.is_noop:
            object.__setattr__(self, "kv_cache", None)
        if self.vocab is not None and not isinstance(self.vocab, VocabPlan):
            raise TypeError(f"plan vocab: expected VocabPlan or None, got {type(self.vocab).__name__}")
        if self.vocab is not None and self.vocab.is_noop:
            object.__setattr__(self, "vocab", None)
        object.__setattr__(self, "drop_blocks", depth_plan.normalize_drop_blocks(self.drop_blocks))
        ggml = next((k for k, v in kept.items() if v.gguf_type is not None), None)
        if self.distill is not None and ggml is not None:
            raise UserError(f"plan layer {ggml!r} has gguf_type {kept[ggml].gguf_type}, and distillation keeps "
                            "weights on the integer grid only; drop distill or the layer's gguf_type")
        books = next((k for k, v in kept.items() if v.bits is not None and v.quant_method == "kmeans"), None)
        if self.distill is not None and books is not None:
            raise UserError(f"plan layer {books!r} has quant_method kmeans, and distillation keeps weights on the "
                            "integer grid only; drop distill or use quant_method rtn or gptq on that layer")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompressionPlan):
            return NotImplemented
        return (self.version == other.version and dict(self.layers) == dict(other.layers)
                and self.distill == other.distill and self.kv_cache == other.kv_cache and self.vocab == other.vocab
                and self.drop_blocks == other.drop_blocks)

    def __hash__(self) -> int:
        return hash((self.version, tuple(self.layers.items()), self.distill, self.kv_cache, self.vocab,
                     self.drop_blocks))

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def is_empty(self) -> bool:
        return not self.layers and self.kv_cache is None and self.vocab is None and not self.drop_blocks

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"autocompress_plan": self.version,
                               "layers": {k: v.to_dict() for k, v in self.layers.items()}}
        if self.distill is not None:
            out["distill"] = self.distill.to_dict()
        if self.kv_cache is not None:
            out["kv_cache"] = self.kv_cache.to_dict()
        if self.vocab is not None:
            out["vocab"] = self.vocab.to_dict()
        if self.drop_blocks:
            out["drop_blocks"] = list(self.drop_blocks)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> "CompressionPlan":
        if not isinstance(data, dict) or "layers" not in data or not isinstance(data["layers"], dict):
            raise UserError(f"{where}: not a compression plan (expected an object with a 'layers' mapping)")
        version = data.get("autocompress_plan", PLAN_VERSION)
        if type(version) is not int or version > PLAN_VERSION:
            raise UserError(f"{where}: plan version {version!r} is newer than this autocompress reads "
                            f"(<= {PLAN_VERSION}); upgrade autocompress")
        layers = {}
        for name, entry in data["layers"].items():
            if not isinstance(entry, dict):
                raise UserError(f"{where}: layer {name!r} must map to an object of settings")
            layers[name] = LayerPlan.from_dict(entry, where=f"{where}: layer {name!r}")
        distill = data.get("distill")
        if distill is not None:
            distill = DistillConfig.from_dict(distill, where=f"{where}: distill")
        kv_cache = data.get("kv_cache")
        if kv_cache is not None:
            kv_cache = KVCachePlan.from_dict(kv_cache, where=where)
        vocab = data.get("vocab")
        if vocab is not None:
            vocab = VocabPlan.from_dict(vocab, where=where)
        drop = depth_plan.normalize_drop_blocks(data.get("drop_blocks"), where=where)
        return cls(layers, version=PLAN_VERSION, distill=distill, kv_cache=kv_cache, vocab=vocab, drop_blocks=drop)

    @classmethod
    def from_json(cls, text: str, where: str = "plan") -> "CompressionPlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, where=where)

    @classmethod
    def load(cls, path: str) -> "CompressionPlan":
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise UserError(f"plan file {path!r} cannot be read: {exc.strerror}") from None
        return cls.from_json(text, where=str(path))

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json() + "\n")

    def flatten(self) -> dict[str, Any]:
        """`{"<layer>.<field>": value}` for the non-default fields: MLflow params, Optuna-style names; with
        distillation also `{"distill.<field>": value}` for all its fields (`layers` as a string)."""
        flat: dict[str, Any] = {f"{name}.{k}": v for name, lp in self.layers.items() for k, v in lp.to_dict().items()}
        if self.distill is not None:
            flat.update({f"distill.{k}": (v if not isinstance(v, list) else ",".join(map(str, v)))
                         for k, v in self.distill.to_dict().items()})
        if self.kv_cache is not None:
            flat.update(self.kv_cache.flatten())
        if self.vocab is not None:
            flat.update(self.vocab.flatten())
        flat.update(depth_plan.flatten(self.drop_blocks))
        return flat

    def summary(self) -> str:
        """One line: how many layers get each setting, e.g. "bits 3x6 4x12 8x6; act int8x6; smooth 0.5x6;
        structured 25%x3", then the distillation if any (e.g. "; distill 200 steps lr 0.0001"), then a quantized
        KV cache (e.g. "; kv 4"), a pruned vocabulary (e.g. "; vocab 50%") and the dropped blocks (e.g. "; drop 2
        blocks (3, 5)")."""
        if self.kv_cache is not None or self.vocab is not None or self.drop_blocks:
            head = CompressionPlan(self.layers, distill=self.distill).summary()
            tail = self._plan_level()
            return tail if head == "empty" else f"{head}; {tail}"
        if self.distill is not None:
            return f"{CompressionPlan(self.layers).summary()}; {self.distill.summary()}"
        if self.is_empty:
            return "empty"
        parts: dict[str, dict[str, int]] = {}

        def count(kind: str, value: str) -> None:
            parts.setdefault(kind, {})
            parts[kind][value] = parts[kind].get(value, 0) + 1

        for p in self.layers.values():
            if p.bits is not None:
                count("bits", str(p.bits))
            if p.gguf_type is not None:
                count("gguf", p.gguf_type)
            if p.act_bits is not None:
                count("act", f"int{p.act_bits}")
            if p.smooth is not None:
                count("smooth", f"{p.smooth:g}")
            if p.prunes:
                kind = "structured" if p.pattern == "structured" else "sparsity"
                count(kind, p.pattern if p.n_m else f"{p.sparsity:.0%}")
            if p.factorizes:
                count("rank", str(p.rank))
        order = ("bits", "gguf", "act", "smooth", "sparsity", "structured", "rank")
        return "; ".join(f"{kind} " + " ".join(f"{v}x{n}" for v, n in sorted(parts[kind].items()))
                         for kind in order if kind in parts)

    # ---- display -------------------------------------------------------------------------------------
    _COLUMNS = ("layer", "bits", "group", "sym", "quant", "gguf", "act", "smooth", "sparsity", "pattern", "prune",
                "rank")

    def rows(self) -> list[tuple[str, ...]]:
        """One row of display strings per layer, in `_COLUMNS` order ("-" where nothing is done)."""
        out = []
        for name, p in self.layers.items():
            q = p.bits is not None
            out.append((
                name,
                str(p.bits) if q else "-",
                ("ch" if p.group_size is None else str(p.group_size)) if q else "-",
                ("sym" if p.symmetric else "asym") if q else "-",
                (p.quant_method + (f" {p.kmeans_weighting}" if p.kmeans_weighting != "none" else "")) if q else "-",
                p.gguf_type or "-",
                f"int{p.act_bits}" if p.act_bits else "-",
                f"{p.smooth:g}" if p.smooth is not None else "-",
                f"{p.sparsity:.0%}" if p.prunes else "-",
                p.pattern if p.prunes else "-",
                p.prune_method if p.prunes else "-",
                f"{p.rank}{' ' + p.rank_method if p.rank_method != 'svd' else ''}" if p.factorizes else "-",
            ))
        return out

    def _visible(self) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
        """Column names and rows with the columns that are "-" on every row left out."""
        rows = self.rows()
        keep = [i for i, _ in enumerate(self._COLUMNS) if i == 0 or any(r[i] != "-" for r in rows)]
        return tuple(self._COLUMNS[i] for i in keep), [tuple(r[i] for i in keep) for r in rows]

    def _plan_level(self) -> str | None:
        """The plan-level entries other than distillation, e.g. "kv 4; vocab 50%; drop 1 block (3)", or None."""
        parts = [x.summary() for x in (self.kv_cache, self.vocab) if x is not None]
        if self.drop_blocks:
            parts.append(depth_plan.summary(self.drop_blocks))
        return "; ".join(parts) if parts else None

    def __str__(self) -> str:
        kv = self._plan_level()
        if not self.layers:
            tail = f"; then {self.distill.summary()}" if self.distill is not None else ""
            if kv is not None:
                return f"CompressionPlan (weights left as they are{tail}; {kv})"
            return f"CompressionPlan (empty: the model is left as it is{tail})"
        columns, body = self._visible()
        rows = [columns, *body]
        widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.distill is not None:
            lines.append(f"then {self.distill.summary()}")
        if kv is not None:
            lines.append(kv)
        return "\n".join(lines)

    def __rich__(self) -> Any:
        from rich.table import Table

        columns, body = self._visible()
        table = Table(title=f"CompressionPlan v{self.version}: {len(self)} layers",
                      caption="; ".join(c for c in (f"then {self.distill.summary()}" if self.distill else "",
                                                    self._plan_level() or "") if c) or None)
        for col in columns:
            table.add_column(col, justify="left" if col in ("layer", "pattern") else "right", no_wrap=True)
        for row in body:
            table.add_row(*row)
        return table
