"""The same checks over every registered policy, every method, on BERT, Llama and GPT-2 shapes:
the model still runs, no layer grows, layers outside the plan are untouched, an empty plan changes nothing,
and the plan's settings are exactly what ends up in the weights (`plan_violations`). The last tests show
that this contract can fail: it fails for a quantizer that leaves the weights as they are, and every
variant's plan is broken by the uncompressed model."""

from __future__ import annotations

import pytest
import torch

from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import POLICIES, Calibration, apply_plan, quantize
from autocompress.policies.verify import plan_violations
from autocompress.selection import Rule, build_plan

MODELS = ("random:bert", "random:llama", "random:gpt2")

# variant -> (policy it exercises, rules)
VARIANTS = {
    "rtn-4bit-g16": ("quantize", [Rule(LayerPlan(bits=4, group_size=16))]),
    "rtn-3bit-channel-asym": ("quantize", [Rule(LayerPlan(bits=3, group_size=None, symmetric=False))]),
    "gptq-3bit-g16": ("quantize", [Rule(LayerPlan(bits=3, group_size=16, quant_method="gptq"))]),
    "ggml-q4_1": ("quantize", [Rule(LayerPlan(gguf_type="Q4_1"))]),
    "ggml-q5_0-gptq": ("quantize", [Rule(LayerPlan(gguf_type="Q5_0", quant_method="gptq"))]),
    "w8a8": ("quantize", [Rule(LayerPlan(bits=8, act_bits=8))]),
    "w8a8-smooth": ("smooth", [Rule(LayerPlan(bits=8, group_size=None, act_bits=8, smooth=0.5))]),
    "magnitude-50": ("sparsify", [Rule(LayerPlan(sparsity=0.5))]),
    "wanda-50": ("sparsify", [Rule(LayerPlan(sparsity=0.5, prune_method="wanda"))]),
    "2:4": ("sparsify", [Rule(LayerPlan(pattern="2:4"))]),
    "svd-quarter": ("lowrank", [Rule(LayerPlan(rank=0.25))]),
    "whitened-rank8": ("lowrank", [Rule(LayerPlan(rank=8, rank_method="whitened"))]),
    "structured-25": ("structured", [Rule(LayerPlan(sparsity=0.25, pattern="structured"))]),
    "structured-wanda-50": ("structured", [Rule(LayerPlan(sparsity=0.5, pattern="structured",
                                                          prune_method="wanda"))]),
    "all-together": ("all", [
        Rule(LayerPlan(bits=4, group_size=16, quant_method="gptq")),
        Rule(LayerPlan(sparsity=0.25, pattern="structured", prune_method="wanda"), targets=("re:(mlp|intermediate)$",)),
        Rule(LayerPlan(bits=3, group_size=16, sparsity=0.5, prune_method="wanda"), targets=("re:(k_proj|key|c_attn)$",)),
        Rule(LayerPlan(bits=6, rank=0.5, rank_method="whitened"), targets=("re:(o_proj|attention.output.dense|attn.c_proj)$",)),
    ]),
}


def run(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def module_params(model, name):
    return sum(p.numel() for p in model.get_submodule(name).parameters())


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    return {"input_ids": torch.randint(100, 1000, (2, 12), generator=g), "attention_mask": mask}


def test_every_policy_has_a_variant():
    assert set(POLICIES.names()) <= {policy for policy, _ in VARIANTS.values()}


@pytest.mark.parametrize("spec", MODELS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_policy_contract(spec, variant, batch, calibration_batches):
    loaded = load_model(spec)
    model, before = loaded.model, loaded.info
    plan = build_plan(before, VARIANTS[variant][1])
    touched = set(plan.layers)
    for name in plan.layers:
        if name in before.structures:
            touched.update((*before.structures[name].producers, before.structures[name].consumer))
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}
    ref_params = {n: module_params(model, n) for n in before.layers}
    shape = run(model, batch).shape

    apply_plan(model, plan, Calibration(calibration_batches))

    out = run(model, batch)
    assert out.shape == shape and torch.isfinite(out).all(), "the compressed model must still run"
    for name, n in ref_params.items():
        assert module_params(model, name) <= n, f"{name} grew"
    assert plan_violations(model, plan, before) == []
    state = model.state_dict()
    for key, value in ref_state.items():
        layer = key.rsplit(".", 1)[0]
        if layer not in touched and key in state:
            assert torch.equal(state[key], value), f"{key} changed but {layer} is not in the plan"


@pytest.mark.parametrize("spec", MODELS)
def test_empty_plan_changes_nothing(spec, batch):
    loaded = load_model(spec)
    ref = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    out = run(loaded.model, batch)
    apply_plan(loaded.model, CompressionPlan({}))
    assert all(torch.equal(ref[k], v) for k, v in loaded.model.state_dict().items())
    assert torch.equal(out, run(loaded.model, batch))


def test_verifier_catches_a_weight_off_the_grid(calibration_batches):
    loaded = load_model("random:bert")
    plan = build_plan(loaded.info, [Rule(LayerPlan(bits=2, group_size=16), targets=("re:query$",))])
    apply_plan(loaded.model, plan)
    assert plan_violations(loaded.model, plan, loaded.info) == []
    with torch.no_grad():
        loaded.model.encoder.layer[0].attention.self.query.weight.add_(torch.randn(64, 64) * 1e-3)
    assert any("off the recorded 2-bit grid" in p for p in plan_violations(loaded.model, plan, loaded.info))


def _keep_rtn(w, bits, group_size, symmetric, return_params=False):
    """A quantizer that does nothing: the weight unchanged, with the grid RTN would have recorded."""
    scale, zero = quantize.quant_params(w, bits, group_size, symmetric)
    return (w.clone(), scale, zero) if return_params else w.clone()


def _keep_gptq(w, gram, bits, group_size, symmetric, return_params=False, **_):
    return _keep_rtn(w, bits, group_size, symmetric, return_params)


@pytest.mark.parametrize("spec", MODELS)
@pytest.mark.parametrize("variant", ["rtn-4bit-g16", "w8a8", "gptq-3bit-g16"])
def test_contract_fails_for_a_quantizer_that_does_nothing(spec, variant, batch, calibration_batches, monkeypatch):
    monkeypatch.setattr(quantize, "quantize_rtn", _keep_rtn)
    monkeypatch.setattr(quantize, "quantize_gptq", _keep_gptq)
    with pytest.raises(AssertionError, match="off the recorded"):
        test_policy_contract(spec, variant, batch, calibration_batches)
    loaded = load_model(spec)
    plan = build_plan(loaded.info, VARIANTS[variant][1])
    apply_plan(loaded.model, plan, Calibration(calibration_batches))
    reported = {p.split(": ")[0] for p in plan_violations(loaded.model, plan, loaded.info)
                if "weights are off the recorded" in p}
    assert plan.layers and reported == set(plan.layers)


@pytest.mark.parametrize("spec", MODELS)
def test_the_uncompressed_model_breaks_every_variant(spec):
    loaded = load_model(spec)
    for variant, (_, rules) in VARIANTS.items():
        plan = build_plan(loaded.info, rules)
        reported = {p.split(": ")[0] for p in plan_violations(loaded.model, plan, loaded.info)}
        assert plan.layers and reported == set(plan.layers), variant
