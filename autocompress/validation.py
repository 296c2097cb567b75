"""Check a plan against a model's inventory before any weight is touched."""

from __future__ import annotations

from autocompress.errors import UserError
from autocompress.depth.plan import check_depth_plan
from autocompress.kvcache.plan import check_kv_cache
from autocompress.vocab.plan import check_vocab
from autocompress.models import ModelInfo
from autocompress.plan import GGUF_BLOCK, CompressionPlan, LayerPlan, resolve_rank
from autocompress.selection import suggest


def validate_plan(plan: CompressionPlan, info: ModelInfo) -> None:
    """Raise `UserError` (one line, naming the layer and the fix) if `plan` cannot be applied to the model.

    Checks: every key is a layer, a structure or an embedding table of the model; structure keys carry only
    structured pruning and Linear keys never do; embedding keys carry only RTN weight quantization (bits,
    group_size, symmetric) and are not tied to a Linear layer; a Linear tied to a table is not smoothed; a rank
    fits its layer and does not grow it; head pruning is not asked of grouped-query attention; a `kv_cache`
    entry fits the model's cache (`autocompress.kvcache.plan.check_kv_cache`); a `vocab` entry's ids fit the
    vocabulary (`autocompress.vocab.plan.check_vocab`); `drop_blocks` are blocks of the model and leave at least
    one (`autocompress.depth.plan.check_drop_blocks`).
    """
    if plan.kv_cache is not None:
        check_kv_cache(plan.kv_cache, info)
    if plan.vocab is not None:
        check_vocab(plan.vocab, info, plan.layers)
    check_depth_plan(plan, info)
    for name, entry in plan.layers.items():
        if name in info.structures:
            s = info.structures[name]
            if entry.pattern != "structured":
                raise UserError(f"plan layer {name!r} is a structure ({s.kind}); it takes only "
                                "pattern: structured with a sparsity (put bits/rank on its Linear layers)")
            if s.kind == "heads" and s.kv_groups > 1:
                raise UserError(f"plan layer {name!r}: head pruning with grouped-query attention is not "
                                "supported; prune the block's FFN neurons instead")
            continue
        if name in info.embeddings:
            _check_embedding(name, entry, info)
            _check_blocks(name, entry, info.embeddings[name].embedding_dim, plan, info)
            continue
        if name not in info.layers:
            raise UserError(f"plan layer {name!r} is not a layer of this {info.model_type} model"
                            + suggest(name, [*info.layers, *info.structures, *info.embeddings]))
        li = info.layers[name]
        _check_blocks(name, entry, li.in_features, plan, info)
        tables = [e.name for e in info.embeddings.values() if e.tied_to == name]
        if entry.smooth is not None and tables:
            raise UserError(f"plan layer {name!r}: smooth would rescale the embedding table {tables[0]!r} that "
                            "shares its weight; drop smooth on this layer")
        if entry.pattern == "structured":
            owners = [s.name for s in info.structures.values() if name in (*s.producers, s.consumer)]
            hint = f"; put it on the structure {owners[0]!r}" if owners else "; this layer has no structure"
            raise UserError(f"plan layer {name!r}: pattern structured applies to heads/neurons, not to one "
                            f"Linear{hint}")
        if entry.rank is not None:
            rank = resolve_rank(entry.rank, li.out_features, li.in_features)
            full = min(li.in_features, li.out_features)
            if rank > full:
                raise UserError(f"plan layer {name!r}: rank {rank} is larger than the layer allows "
                                f"(min(in, out) = {full}); use a rank <= {full} or a fraction")
            break_even = li.in_features * li.out_features // (li.in_features + li.out_features)
            if rank > break_even:
                raise UserError(f"plan layer {name!r}: rank {rank} would grow the layer (two factors hold more "
                                f"than the {li.out_features}x{li.in_features} weight above rank {break_even}); "
                                f"use a rank <= {break_even}")


def _check_blocks(name: str, entry: LayerPlan, inputs: int, plan: CompressionPlan, info: ModelInfo) -> None:
    """A `gguf_type` needs whole blocks of 32 along each row, on inputs structured pruning leaves alone."""
    if entry.gguf_type is None:
        return
    if inputs % GGUF_BLOCK:
        raise UserError(f"plan layer {name!r}: gguf_type {entry.gguf_type} stores blocks of {GGUF_BLOCK} inputs "
                        f"and the layer has {inputs}; drop its gguf_type")
    shrunk = [s for s, e in plan.layers.items() if e.pattern == "structured" and s in info.structures
              and info.structures[s].consumer == name]
    if shrunk:
        raise UserError(f"plan layer {name!r}: gguf_type {entry.gguf_type} with its inputs pruned by "
                        f"{shrunk[0]!r}; GGUF holds no pruned structures, drop one of them")


def _check_embedding(name: str, entry: LayerPlan, info: ModelInfo) -> None:
    emb = info.embeddings[name]
    if emb.tied_to is not None:
        raise UserError(f"plan layer {name!r} is an embedding table tied to the Linear {emb.tied_to!r} (one "
                        f"weight); quantize {emb.tied_to!r} instead, which quantizes both")
    extra = [f for f, v in (("act_bits", entry.act_bits), ("smooth", entry.smooth), ("sparsity", entry.prunes),
                            ("rank", entry.factorizes)) if v]
    if extra:
        raise UserError(f"plan layer {name!r} is an embedding table; it takes only bits, group_size and "
                        f"symmetric (drop {', '.join(extra)})")
    if entry.quant_method == "kmeans":
        raise UserError(f"plan layer {name!r} is an embedding table; quant_method kmeans (a codebook) is stored "
                        "for Linear layers only: use rtn on the table")
    if entry.quant_method != "rtn":
        raise UserError(f"plan layer {name!r} is an embedding table; quant_method {entry.quant_method!r} needs "
                        "a Linear's input statistics: use rtn")
