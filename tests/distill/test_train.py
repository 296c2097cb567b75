"""distill / apply_and_distill on tiny random models: it learns, and the plan stays exactly true."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.distill import DistillConfig, apply_and_distill, distill
from autocompress.distill.train import RESULT_ATTR
from autocompress.loading import load_model
from autocompress.modules import LowRankLinear, is_linear_like, weight_matrix
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from autocompress.policies.quantize import GRID_ATTR, dequantize, quantize_int
from autocompress.policies.verify import plan_violations
from autocompress.selection import Rule, build_plan

MODELS = ("random:bert", "random:llama", "random:gpt2")
FAST = dict(lr=3e-4, batch_size=8, max_length=16, eval_every=5)
# every kind of constraint at once: grids (sym/asym, groups/channel), zeros (unstructured, 2:4), factors,
# removed neurons and W8A8 hooks
MIXED = [
    Rule(LayerPlan(bits=3, group_size=16)),
    Rule(LayerPlan(sparsity=0.25, pattern="structured"), targets=("re:(mlp|intermediate)$",)),
    Rule(LayerPlan(bits=4, group_size=None, symmetric=False, sparsity=0.5), targets=("re:(k_proj|key|c_attn)$",)),
    Rule(LayerPlan(bits=8, act_bits=8, pattern="2:4"), targets=("re:(v_proj|value|mlp.c_proj)$",)),
    Rule(LayerPlan(bits=4, group_size=16, rank=0.5), targets=("re:(o_proj|attention.output.dense|attn.c_proj)$",)),
    Rule(LayerPlan(pattern="2:4"), targets=("re:(up_proj|intermediate.dense|mlp.c_fc)$",)),
]


class _Models(dict):
    def __missing__(self, spec):
        self[spec] = load_model(spec)
        return self[spec]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's waiting makes every small
    op cost milliseconds: one thread here, the session's setting back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded():
    return _Models()  # each tiny model loaded on first use


def batches(n: int = 2, rows: int = 4, seq: int = 12, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(rows, seq, dtype=torch.long)
        mask[-1, seq // 2:] = 0  # one padded row
        out.append({"input_ids": torch.randint(100, 1000, (rows, seq), generator=g), "attention_mask": mask})
    return out


def compressed(lm, rules, calib, tables: LayerPlan | None = None):
    """(plan, compressed copy) for the rules; `tables` also quantizes every untied embedding table."""
    plan = build_plan(lm.info, rules)
    if tables is not None:
        plan = CompressionPlan({**plan.layers, **{n: tables for n in lm.info.untied_tables()}})
    return plan, apply_plan(copy.deepcopy(lm.model), plan, calib, info=lm.info)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_goes_down_and_the_teacher_is_untouched(loaded):
    lm = loaded["random:bert"]
    calib = batches()
    plan, student = compressed(lm, [Rule(LayerPlan(bits=3, group_size=16, sparsity=0.3))], calib)
    teacher_before = snapshot(lm.model)
    cfg = DistillConfig(steps=12, **{**FAST, "batch_size": 8})  # one batch of all 8 rows: the same loss every step
    result = distill(student, lm.model, calib, cfg, lm.task, plan=plan)
    assert result.steps_run == 12 and not result.stopped_early and len(result.losses) == 12
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.trainable_params > 0 and result.seconds > 0
    after = snapshot(lm.model)
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)
    assert not lm.model.training and not student.training


@pytest.mark.parametrize("spec", MODELS)
def test_plan_stays_exactly_true(loaded, spec):
    lm = loaded[spec]
    calib = batches()
    plan, student = compressed(lm, MIXED, calib, tables=LayerPlan(bits=4, group_size=16))
    assert any(n in lm.info.embeddings for n in plan.layers)  # quantized tables stay as quantized (frozen)
    before = snapshot(student)
    zeros = {n: weight_matrix(m) == 0 for n, m in student.named_modules() if is_linear_like(m)}
    classes = {n: type(m) for n, m in student.named_modules()}
    flags = {n: p.requires_grad for n, p in student.named_parameters()}
    result = distill(student, lm.model, calib, DistillConfig(steps=12, **FAST), lm.task, plan=plan)
    assert result.steps_run == 12
    assert plan_violations(student, plan, lm.info) == []
    after = snapshot(student)
    # same parameters, same shapes (factors keep their rank, pruned structures their size), same classes
    assert list(after) == list(before) and all(after[k].shape == before[k].shape for k in after)
    assert {n: type(m) for n, m in student.named_modules()} == classes
    assert {n: p.requires_grad for n, p in student.named_parameters()} == flags
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed, "training changed nothing"
    assert not any("embed" in k or "wte" in k or "wpe" in k or "lm_head" in k for k in changed)
    for name, entry in plan.layers.items():
        module = student.get_submodule(name)
        if entry.factorizes:
            assert isinstance(module, LowRankLinear)
        if entry.act_bits:
            assert getattr(module, "_autocompress_act_bits") == 8 and module._forward_pre_hooks
        if entry.prunes and entry.pattern != "structured":  # pruned zeros stay zero
            assert not (weight_matrix(module)[zeros[name]] != 0).any()
    for name, module in student.named_modules():
        grid = getattr(module, GRID_ATTR, None)
        if grid is None:
            continue
        w = weight_matrix(module)
        q = quantize_int(w, grid.scale, grid.zero, grid.bits, grid.group_size, grid.symmetric)
        assert torch.equal(dequantize(q, grid.scale, grid.zero, grid.group_size).to(w.dtype), w), name
    with torch.no_grad():
        out = student(**calib[0])
    assert torch.isfinite(out[0]).all()


def test_quantized_weights_move_between_grid_points(loaded):
    """The straight-through estimator really trains quantized weights: integers change, the grid does not."""
    lm = loaded["random:bert"]
    calib = batches()
    plan, student = compressed(lm, [Rule(LayerPlan(bits=3, group_size=16))], calib)
    name = "encoder.layer.0.intermediate.dense"
    module = student.get_submodule(name)
    grid = getattr(module, GRID_ATTR)
    q_before = quantize_int(weight_matrix(module), grid.scale, grid.zero, 3, 16, True)
    distill(student, lm.model, calib, DistillConfig(steps=10, **FAST), lm.task, plan=plan)
    assert getattr(module, GRID_ATTR) is grid
    q_after = quantize_int(weight_matrix(module), grid.scale, grid.zero, 3, 16, True)
    assert (q_after != q_before).any() and q_after.abs().max() <= 3
    groups = weight_matrix(module).reshape(-1, 16)
    assert max(len(torch.unique(g)) for g in groups) <= 2 ** 3


def test_report_true_stops_early(loaded):
    lm = loaded["random:llama"]
    calib = batches(3)
    plan, student = compressed(lm, [Rule(LayerPlan(bits=4, group_size=16))], calib)
    seen = []

    def report(step, metrics):
        seen.append((step, metrics))
        return step >= 4

    cfg = DistillConfig(steps=50, **{**FAST, "eval_every": 2})
    result = distill(student, lm.model, calib, cfg, lm.task, report, plan=plan)
    assert result.stopped_early and result.steps_run == 4 and len(result.losses) == 4
    assert [s for s, _ in seen] == [2, 4] and [s for s, _ in result.evals] == [2, 4]
    assert {"loss", "kd", "hidden", "kl"} <= set(seen[0][1]) and seen[0][1]["kl"] > -1e-6
    assert plan_violations(student, plan, lm.info) == []
    # a report that never stops runs every step; eval_fn replaces the held-out metric
    student2 = compressed(lm, [Rule(LayerPlan(bits=4, group_size=16))], calib)[1]
    cfg = DistillConfig(steps=4, **{**FAST, "eval_every": 2})
    result = distill(student2, lm.model, calib, cfg, lm.task, lambda s, m: False,
                     eval_fn=lambda model: {"probe": 1.0 if not model.training else 0.0}, plan=plan)
    assert not result.stopped_early and result.steps_run == 4
    assert [m["probe"] for _, m in result.evals] == [1.0, 1.0] and "kl" not in result.evals[0][1]


def test_deterministic_with_a_seed(loaded):
    lm = loaded["random:gpt2"]
    calib = batches(3)
    rules = [Rule(LayerPlan(bits=4, group_size=16, pattern="2:4"))]
    runs = []
    for seed in (0, 0, 1):
        plan, student = compressed(lm, rules, calib)
        cfg = DistillConfig(steps=6, seed=seed, **{**FAST, "batch_size": 4})
        result = distill(student, lm.model, calib, cfg, lm.task, plan=plan)
        runs.append((result.losses, snapshot(student)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert runs[0][0] != runs[2][0]


def test_apply_and_distill(loaded):
    lm = loaded["random:bert"]
    calib = batches()
    base_before = snapshot(lm.model)
    layers = build_plan(lm.info, [Rule(LayerPlan(bits=4, group_size=16))]).layers
    plain = apply_and_distill(lm.model, CompressionPlan(layers), calib, lm.info)
    assert getattr(plain, RESULT_ATTR) is None
    plan = CompressionPlan(layers, distill=DistillConfig(steps=5, layers="last", **FAST))
    model = apply_and_distill(lm.model, plan, calib, lm.info)
    result = getattr(model, RESULT_ATTR)
    assert result.steps_run == 5 and plan_violations(model, plan, lm.info) == []
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))
    assert all(torch.equal(base_before[k], v) for k, v in lm.model.state_dict().items())


def test_bad_requests(loaded):
    lm = loaded["random:bert"]
    calib = batches()
    plan, student = compressed(lm, [Rule(LayerPlan(bits=4, group_size=16))], calib)
    from autocompress.errors import UserError

    with pytest.raises(UserError, match="distill.layers: block 7"):
        distill(student, lm.model, calib, DistillConfig(steps=2, layers=[7]), lm.task, plan=plan)
    with pytest.raises(UserError, match="task 'speech'"):
        distill(student, lm.model, calib, DistillConfig(steps=2), "speech", plan=plan)
    with pytest.raises(UserError, match="calibration"):
        apply_and_distill(lm.model, CompressionPlan(plan.layers, distill=DistillConfig(steps=2)), [], lm.info)
    with pytest.raises(ValueError, match="non-finite|became"):
        distill(student, lm.model, calib, DistillConfig(steps=3, lr=1e30, **{k: v for k, v in FAST.items()
                                                                             if k != "lr"}), lm.task, plan=plan)
    assert plan_violations(student, plan, lm.info) == []  # still exactly on the grid after the failure


def test_export_reads_the_trained_grid(loaded):
    matrix = pytest.importorskip("autocompress.export.matrix")
    lm = loaded["random:gpt2"]
    calib = batches()
    plan, student = compressed(lm, [Rule(LayerPlan(bits=3, group_size=16, sparsity=0.5))], calib)
    distill(student, lm.model, calib, DistillConfig(steps=5, **FAST), lm.task, plan=plan)
    for name, entry in plan.layers.items():
        module = student.get_submodule(name)
        matrix.pack_matrix(weight_matrix(module), entry, getattr(module, GRID_ATTR), 4, where=name)


def test_constraints_change_no_output_and_let_gradients_through_int8_activations(loaded):
    """At step 0 the constrained model computes exactly what the compressed one does (shadow starts round to
    the same integers); every layer gets a gradient, also upstream of W8A8 inputs; release restores the hooks."""
    from autocompress.distill.constraints import constrain
    from autocompress.policies.quantize import act_quant_hook

    lm = loaded["random:bert"]
    calib = batches()
    plan, student = compressed(lm, [Rule(LayerPlan(bits=4, group_size=16, act_bits=8, sparsity=0.5))], calib)
    with torch.no_grad():
        before = student(**calib[0]).last_hidden_state
    cons = constrain(student, plan, lm.model, lm.info.block_prefix)
    try:
        assert cons.act_hooks == len(plan) and len(cons.held) == len(plan)
        out = student(**calib[0]).last_hidden_state
        assert torch.equal(out, before)
        out.pow(2).mean().backward()
        query = student.get_submodule("encoder.layer.0.attention.self.query")  # only reached through W8A8 inputs
        grad = query.parametrizations.weight.original.grad
        assert grad is not None and grad.abs().sum() > 0
        assert not grad[~cons.held["encoder.layer.0.attention.self.query"].mask].any()  # pruned: no gradient
        assert student.embeddings.word_embeddings.weight.grad is None
    finally:
        cons.release()
    query = student.get_submodule("encoder.layer.0.attention.self.query")
    assert list(query._forward_pre_hooks.values()) == [act_quant_hook]
    assert plan_violations(student, plan, lm.info) == []
    with torch.no_grad():
        assert torch.equal(student(**calib[0]).last_hidden_state, before)


def test_without_a_plan_the_constraints_are_read_off_the_model(loaded):
    lm = loaded["random:gpt2"]
    calib = batches()
    plan, student = compressed(lm, [Rule(LayerPlan(bits=4, group_size=16, sparsity=0.5))], calib)
    result = distill(student, lm.model, calib, DistillConfig(steps=4, **FAST), lm.task)  # no plan given
    assert result.steps_run == 4 and plan_violations(student, plan, lm.info) == []


def test_sequence_classification_logits(loaded):
    lm = load_model("random:bert", task="sequence-classification")
    calib = batches()
    plan, student = compressed(lm, [Rule(LayerPlan(bits=3, group_size=16))], calib)
    head_before = snapshot(student.classifier)
    cfg = DistillConfig(steps=4, **{**FAST, "eval_every": 2})
    result = distill(student, lm.model, calib, cfg, lm.task, lambda s, m: False, plan=plan)
    assert result.steps_run == 4 and result.evals[-1][1]["kl"] > -1e-6  # a KL, up to float rounding
    assert plan_violations(student, plan, lm.info) == []
    assert all(torch.equal(v, head_before[k]) for k, v in student.classifier.state_dict().items())  # head frozen
