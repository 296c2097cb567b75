"""Decision units of a config's space: which layers, tables and structures share one setting.

Each technique picks its layers with its own `targets`/`ignore` (`select_layers`; default: the Linear layers
inside the blocks). With `share: group`, layers of one `ModelInfo.groups` group (q/k/v, gate/up) that are all
selected form ONE unit named by the group (`encoder.layer.0.attention.self.qkv`) and share its settings; every
other layer is a unit of its own. With `share: layer` every layer is its own unit. Structured pruning decides
per structure (heads or FFN neurons); grouped-query attention heads are left out (they cannot be pruned).
`space.embeddings` picks embedding tables (`select_embeddings`; default: every table), each table its own unit,
named by the table, whatever `share` says: tables differ too much to share a setting (alone at 4 bits,
MiniLM's 2 x 384 token-type table costs more fidelity than its 30522 x 384 word table:
benchmarks/results/uniform_corners.md). A table tied to a Linear (SmolLM2's `model.embed_tokens` and `lm_head`,
GPT-2's `transformer.wte`) is such a unit too, still named (and its params named) by the table, but its plan
entry goes on the Linear (`lm_head`): that weight is the table, [vocab, hidden] in both, so quantizing the
Linear quantizes the table and a group along the Linear's inputs is a group along each token's vector. A space
whose quantize or lowrank section also selects that Linear is refused (one weight, two decisions).
Under a target format (spaces/formats.py) only the weights it can quantize are units of quantize and
embeddings.
"""

from __future__ import annotations

from typing import Callable

from autocompress.config import SpaceSection
from autocompress.errors import UserError
from autocompress.models import ModelInfo
from autocompress.selection import select_embeddings, select_layers
from autocompress.spaces.formats import FormatChoices

Units = dict[str, tuple[str, ...]]  # unit name -> its layers (or tables' weights, or structure)


def technique_units(space: SpaceSection, info: ModelInfo, formats: FormatChoices) -> dict[str, Units]:
    """Technique -> its decision units, for each section of `space` that decides per layer, table or
    structure (lowrank, quantize, prune, embeddings, structured, in that order). `UserError` (one line) for a
    selection that finds nothing, fits no weight of the target format, or holds only grouped-query heads."""
    out: dict[str, Units] = {}
    for tech in ("lowrank", "quantize", "prune"):
        sec = getattr(space, tech)
        if sec is not None:
            names = select_layers(info, sec.targets, sec.ignore, where=f"space.{tech}")
            if tech == "quantize":
                names = fitting(names, "space.quantize", lambda n: info.layers[n].in_features, formats)
            out[tech] = group_layers(names, space.share, info)
    if space.embeddings is not None:
        e = space.embeddings
        tables = fitting(select_embeddings(info, e.targets, e.ignore), "space.embeddings",
                         lambda n: info.embeddings[n].embedding_dim, formats)
        out["embeddings"] = table_units(tables, info, out)
    if space.structured is not None:
        st = space.structured
        names = [n for n in select_layers(info, st.targets, st.ignore, structures=True, where="space.structured")
                 if info.structures[n].kv_groups == 1]
        if not names:
            raise UserError("space.structured: the selected structures are all grouped-query attention heads, "
                            "which cannot be pruned; target the FFN neurons instead")
        out["structured"] = {n: (n,) for n in names}
    return out


def group_layers(names: list[str], share: str, info: ModelInfo) -> Units:
    """The units of the selected layers `names`: with `share` "group", each group all of whose layers are
    selected is one unit named by the group; every other layer a unit of its own."""
    chosen, owner = set(names), {}
    if share == "group":
        for group, members in info.groups.items():
            if set(members) <= chosen and not set(members) & set(owner):
                owner.update({m: group for m in members})
    units: Units = {}
    for name in names:
        unit = owner.get(name, name)
        units.setdefault(unit, info.groups[unit] if unit in owner.values() else (name,))
    return units


def fitting(names: list[str], where: str, inputs: Callable[[str], int], formats: FormatChoices) -> list[str]:
    """The selected weights the target format can quantize (all of them without one); `UserError` if none."""
    kept = [n for n in names if formats.fits(inputs(n))]
    if names and not kept:
        raise UserError(f"{where}: none of the selected weights has a multiple of 32 inputs, which "
                        f"target.format {formats.fmt} needs; select others or drop target.format")
    return kept


def table_units(tables: list[str], info: ModelInfo, chosen: dict[str, Units]) -> Units:
    """Each table a unit named by itself, holding itself, or for a table tied to a Linear that Linear (see
    the module docstring); `chosen` holds the units of the techniques drawn so far. `UserError` when the Linear
    does not hold the table in its [out, in] layout (a group would then run across tokens) or when
    space.quantize or space.lowrank also selects it."""
    units: Units = {}
    for name in tables:
        emb = info.embeddings[name]
        linear = emb.tied_to
        if linear is None:
            units[name] = (name,)
            continue
        li = info.layers[linear]
        if (li.out_features, li.in_features) != (emb.num_embeddings, emb.embedding_dim):
            raise UserError(f"space.embeddings: the table {name!r} is tied to {linear!r}, which holds it "
                            f"transposed ({li.out_features} x {li.in_features}), so its groups would run "
                            f"across tokens; add {name!r} to space.embeddings.ignore and quantize "
                            f"{linear!r} through space.quantize")
        for tech in ("quantize", "lowrank"):
            if any(linear in members for members in chosen.get(tech, {}).values()):
                raise UserError(f"space.embeddings and space.{tech} both select {linear!r}, which holds the "
                                f"tied table {name!r} (one weight, two decisions); add {linear!r} to "
                                f"space.{tech}.ignore, or {name!r} to space.embeddings.ignore (or drop "
                                "space.embeddings when it is the only table)")
        if (linear,) not in units.values():  # tables sharing one weight (T5's shared/encoder/decoder): one unit
            units[name] = (linear,)
    return units
