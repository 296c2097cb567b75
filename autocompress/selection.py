"""Choosing layers: `targets` / `ignore` selectors, and building a plan from rules.

A selector is one of
  - an exact module name (`encoder.layer.0.attention.self.query`) or structure name;
  - a group name from `ModelInfo.groups` (`encoder.layer.0.attention.self.qkv`), meaning all its layers;
  - a module class name (`Linear`, `Conv1D`);
  - `re:<pattern>`, matched with `re.search` against the full module name (`re:attention\\.self\\.(query|key)`).
Default targets are the Linear layers inside the repeated blocks (`ModelInfo.targets_by_default`).
Embedding tables are chosen apart, by `select_embeddings` (class name `Embedding`; default: every table, tied
ones included: a table tied to a Linear is quantized through that Linear, see `spaces.units`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from autocompress.errors import UserError, echo
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan, LayerPlan


def _matches(selector: str, name: str, module_class: str) -> bool:
    if selector.startswith("re:"):
        return re.search(selector[3:], name) is not None
    return selector == name or selector == module_class


def _check_regex(selector: str, where: str) -> None:
    if selector.startswith("re:"):
        try:
            re.compile(selector[3:])
        except re.error as exc:
            raise UserError(f"{where}: {echo(selector)} is not a valid regular expression ({exc})") from None


def select_layers(info: ModelInfo, targets: Sequence[str] | None = None, ignore: Sequence[str] = (),
                  structures: bool = False, where: str = "targets") -> list[str]:
    """Names (in model order) of the Linear layers, or with `structures=True` the structures, that match
    any of `targets` (default: every block Linear / every structure) and none of `ignore`.

    Raises `UserError` when a selector is malformed or when nothing at all is selected, naming the selectors.
    """
    for sel in [*(targets or []), *ignore]:
        _check_regex(sel, where)
    if structures:
        pool = {n: ("heads" if s.kind == "heads" else "neurons") for n, s in info.structures.items()}
        default = list(pool)
    else:
        pool = {n: li.module_class for n, li in info.layers.items()}
        default = info.targets_by_default()

    def expand(selectors: Iterable[str]) -> set[str]:
        chosen: set[str] = set()
        for sel in selectors:
            if sel in info.groups and not structures:
                chosen.update(info.groups[sel])
            chosen.update(n for n, cls in pool.items() if _matches(sel, n, cls))
        return chosen

    chosen = expand(targets) if targets else set(default)
    chosen -= expand(ignore)
    if not chosen:
        kind = "structures" if structures else "layers"
        raise UserError(f"{where}: found no {kind} to compress (targets={echo(list(targets or []))}, "
                        f"ignore={echo(list(ignore))}); check the names with `autocompress inspect MODEL`")
    return [n for n in pool if n in chosen]


def select_embeddings(info: ModelInfo, targets: Sequence[str] | None = None, ignore: Sequence[str] = (),
                      where: str = "space.embeddings") -> list[str]:
    """Names (in model order) of the embedding tables that match any of `targets` (default: all) and none of
    `ignore`, tied tables included (selected by the table's name; `EmbeddingInfo.tied_to` names the Linear
    that holds the shared weight). Raises `UserError` when a selector is malformed or nothing is selected."""
    for sel in [*(targets or []), *ignore]:
        _check_regex(sel, where)
    pool = list(info.embeddings)
    chosen = {n for n in pool if not targets or any(_matches(t, n, "Embedding") for t in targets)}
    chosen -= {n for n in pool if any(_matches(i, n, "Embedding") for i in ignore)}
    if not chosen:
        have = f"the model's tables: {', '.join(pool)}" if pool else "the model has no embedding tables"
        raise UserError(f"{where}: found no embedding tables to compress (targets={echo(list(targets or []))}, "
                        f"ignore={echo(list(ignore))}; {have}); check the names with `autocompress inspect MODEL`")
    return [n for n in pool if n in chosen]


@dataclass(frozen=True)
class Rule:
    """Apply `settings` to the layers (or, for pattern=structured, the structures) that the selectors pick."""

    settings: LayerPlan
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = field(default_factory=tuple)


def build_plan(info: ModelInfo, rules: Sequence[Rule]) -> CompressionPlan:
    """A plan from rules applied in order; a later rule's settings replace an earlier rule's for a layer."""
    layers: dict[str, LayerPlan] = {}
    for i, rule in enumerate(rules):
        on_structures = rule.settings.pattern == "structured"
        names = select_layers(info, rule.targets, rule.ignore, structures=on_structures, where=f"rule {i}")
        layers.update({n: rule.settings for n in names})
    return CompressionPlan(layers)


def uniform_plan(info: ModelInfo, settings: LayerPlan, targets: Sequence[str] | None = None,
                 ignore: Sequence[str] = ()) -> CompressionPlan:
    """The same settings on every selected layer (or structure, for pattern=structured)."""
    return build_plan(info, [Rule(settings, tuple(targets) if targets else None, tuple(ignore))])


def suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else "; list them with `autocompress inspect MODEL`"
