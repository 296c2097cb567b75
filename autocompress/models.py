"""A model's inventory (`ModelInfo`): Linear-like layers, prunable structures, role groups, embedding
tables. `inspect_model` reads module types and shapes only, so it works on a model built on the `meta`
device (see `loading.meta_inventory`). Loading models lives in `autocompress.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from autocompress.modules import LowRankLinear, in_out_features, is_linear_like



@dataclass(frozen=True)
class LayerInfo:
    """A Linear-like layer: `role` is its name inside its block (e.g. `attention.self.query`)."""

    name: str
    module_class: str
    in_features: int
    out_features: int
    bias: bool
    block: int | None
    role: str

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class StructureInfo:
    """Prunable units spanning several layers: attention heads or FFN neurons.

    Removing unit i removes `unit_size` output rows of every producer (for a fused q|k|v producer, in each of
    its three thirds) and the matching input columns of the consumer.
    """

    name: str
    kind: str  # "heads" | "neurons"
    units: int
    unit_size: int
    producers: tuple[str, ...]
    consumer: str
    block: int | None
    fused_qkv: bool = False
    kv_groups: int = 1  # query heads per key/value head (grouped-query attention when > 1)


@dataclass(frozen=True)
class EmbeddingInfo:
    """An `nn.Embedding` table, weight [num_embeddings, embedding_dim]. `tied_to` names the Linear layer
    that shares its weight (GPT-2's lm_head), else None: a tied table is compressed through that layer."""

    name: str
    num_embeddings: int
    embedding_dim: int
    tied_to: str | None = None

    @property
    def params(self) -> int:
        return self.num_embeddings * self.embedding_dim


@dataclass(frozen=True)
class ModelInfo:
    """The inventory a plan is written against. Cheap to pickle; holds no weights. `layers` are the
    Linear-like layers, `embeddings` the embedding tables (which only take weight quantization)."""

    model_type: str
    task: str
    layers: dict[str, LayerInfo]
    structures: dict[str, StructureInfo]
    groups: dict[str, tuple[str, ...]]
    total_params: int
    dtype_bytes: int
    block_prefix: str | None = None
    tied_params: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    embeddings: dict[str, EmbeddingInfo] = field(default_factory=dict)

    def untied_tables(self) -> list[str]:
        """Embedding tables not tied to a Linear layer: the ones a plan may quantize as tables (model order)."""
        return [n for n, e in self.embeddings.items() if e.tied_to is None]

    def targets_by_default(self) -> list[str]:
        """Linear layers inside the repeated blocks (not heads, poolers or embeddings)."""
        return [n for n, li in self.layers.items() if li.block is not None]


# ---- inventory -----------------------------------------------------------------------------------------


def find_blocks(model: nn.Module) -> tuple[str | None, int]:
    """The ModuleList of repeated transformer blocks: the one holding the most Linear-like layers."""
    best, best_count, n_blocks = None, 0, 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            count = sum(1 for m in mod.modules() if is_linear_like(m))
            if count > best_count:
                best, best_count, n_blocks = name, count, len(mod)
    return best, n_blocks


def _features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear-like or factorized layer."""
    if isinstance(module, LowRankLinear):
        return module.in_features, module.out_features
    return in_out_features(module)


def _structures(model: nn.Module, block_of) -> dict[str, StructureInfo]:
    out: dict[str, StructureInfo] = {}
    for name, mod in model.named_modules():
        p = f"{name}." if name else ""
        kids = dict(mod.named_children())
        # BERT-style self-attention: query/key/value here, output projection in the parent's output.dense
        if all(k in kids for k in ("query", "key", "value")) and hasattr(mod, "attention_head_size"):
            parent = name.rpartition(".")[0]
            consumer = f"{parent}.output.dense"
            heads = _features(mod.query)[1] // mod.attention_head_size
            out[name] = StructureInfo(name, "heads", heads, mod.attention_head_size,
                                      (f"{p}query", f"{p}key", f"{p}value"), consumer, block_of(name))
        # Llama-style attention: q/k/v/o projections
        elif all(k in kids for k in ("q_proj", "k_proj", "v_proj", "o_proj")) and hasattr(mod, "head_dim"):
            heads = _features(mod.q_proj)[1] // mod.head_dim
            kv_heads = _features(mod.k_proj)[1] // mod.head_dim
            out[name] = StructureInfo(name, "heads", heads, mod.head_dim,
                                      (f"{p}q_proj", f"{p}k_proj", f"{p}v_proj"), f"{p}o_proj", block_of(name),
                                      kv_groups=heads // kv_heads)
        # GPT-2 attention: fused c_attn (q|k|v) and c_proj
        elif "c_attn" in kids and "c_proj" in kids and hasattr(mod, "head_dim"):
            heads = _features(mod.c_proj)[0] // mod.head_dim
            out[name] = StructureInfo(name, "heads", heads, mod.head_dim, (f"{p}c_attn",), f"{p}c_proj",
                                      block_of(name), fused_qkv=True)
        # Llama-style gated MLP
        elif all(k in kids for k in ("gate_proj", "up_proj", "down_proj")):
            out[name] = StructureInfo(name, "neurons", _features(mod.up_proj)[1], 1,
                                      (f"{p}gate_proj", f"{p}up_proj"), f"{p}down_proj", block_of(name))
        # GPT-2 MLP
        elif "c_fc" in kids and "c_proj" in kids:
            units = _features(mod.c_fc)[1]
            out[name] = StructureInfo(name, "neurons", units, 1, (f"{p}c_fc",), f"{p}c_proj", block_of(name))
        # BERT-style FFN: <block>.intermediate.dense -> <block>.output.dense
        elif "intermediate" in kids and "output" in kids and hasattr(kids["intermediate"], "dense") \
                and hasattr(kids["output"], "dense") and "LayerNorm" in dict(kids["output"].named_children()):
            units = _features(kids["intermediate"].dense)[1]
            out[f"{p}intermediate"] = StructureInfo(f"{p}intermediate", "neurons", units, 1,
                                                    (f"{p}intermediate.dense",), f"{p}output.dense", block_of(name))
    return out


def inspect_model(model: nn.Module, task: str = "embedding") -> ModelInfo:
    """Take the inventory of `model`: every Linear-like layer, prunable structures, role groups."""
    prefix, _ = find_blocks(model)

    def block_of(name: str) -> int | None:
        if prefix is None or not name.startswith(prefix + "."):
            return None
        return int(name[len(prefix) + 1:].split(".")[0])

    def role_of(name: str) -> str:
        b = block_of(name)
        return name if b is None else name[len(f"{prefix}.{b}."):]

    layers = {}
    for name, mod in model.named_modules():
        if is_linear_like(mod):
            n_in, n_out = in_out_features(mod)
            layers[name] = LayerInfo(name, type(mod).__name__, n_in, n_out, mod.bias is not None,
                                     block_of(name), role_of(name))
    structures = _structures(model, block_of)
    embeddings = _embeddings(model, layers)
    groups = {}
    for s in structures.values():
        if len(s.producers) > 1:
            groups[f"{s.name}.{'qkv' if s.kind == 'heads' else 'gate_up'}"] = s.producers
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    first = next(iter(unique.values()))
    config = getattr(model, "config", None)
    return ModelInfo(
        model_type=getattr(config, "model_type", type(model).__name__),
        task=task, layers=layers, structures=structures, groups=groups, total_params=total,
        dtype_bytes=first.element_size(), block_prefix=prefix, extra=_architecture(config, prefix, model),
        embeddings=embeddings,
    )


def _embeddings(model: nn.Module, layers: dict[str, LayerInfo]) -> dict[str, EmbeddingInfo]:
    """Every `nn.Embedding` table, with the Linear layer that shares its weight, if any."""
    linear_weights = {id(model.get_submodule(n).weight): n for n in layers
                      if getattr(model.get_submodule(n), "weight", None) is not None}
    return {name: EmbeddingInfo(name, mod.num_embeddings, mod.embedding_dim, linear_weights.get(id(mod.weight)))
            for name, mod in model.named_modules() if isinstance(mod, nn.Embedding)}


def _architecture(config: Any, prefix: str | None, model: nn.Module) -> dict[str, Any]:
    """The numbers a latency model needs beyond the Linear layers: width, blocks, heads, vocabulary; and the
    longest sequence the model's config declares (`max_positions`, None when it declares none)."""
    def get(*names: str) -> Any:
        return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), None)

    blocks = len(model.get_submodule(prefix)) if prefix else 0
    hidden, heads = get("hidden_size", "n_embd"), get("num_attention_heads", "n_head")
    causal = bool(get("is_decoder")) or "CausalLM" in type(model).__name__ or "LMHead" in type(model).__name__
    # the KV cache of a causal LM: per position and block, num_kv_heads x head_dim keys and as many values
    # (Llama: num_key_value_heads, head_dim; GPT-2: every head); an encoder keeps no cache (None)
    kv_heads = get("num_key_value_heads", "num_attention_heads", "n_head") if causal else None
    head_dim = (get("head_dim") or (hidden // heads if hidden and heads else None)) if causal else None
    # every parameter of each block, so that dropping blocks (autocompress.depth) counts exactly what goes
    block_params = [sum(p.numel() for p in b.parameters()) for b in model.get_submodule(prefix)] if prefix else []
    return {"hidden_size": hidden, "num_blocks": blocks, "num_heads": heads, "vocab_size": get("vocab_size"),
            "causal": causal, "num_kv_heads": kv_heads, "head_dim": head_dim,
            "max_positions": get("max_position_embeddings", "n_positions"), "block_params": block_params}
