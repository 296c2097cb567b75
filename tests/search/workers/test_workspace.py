"""ModelWorkspace: one working copy, put back bit for bit; a TrialRunner that reuses it scores every plan as
one that deep-copies the base model per trial."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan
from autocompress.policies import Calibration, apply_plan
from autocompress.policies.quantize import ACT_ATTR
from autocompress.policies.smooth import SMOOTH_ATTR
from autocompress.search.workers.runner import TrialRunner
from autocompress.search.workers.workspace import ModelWorkspace
from autocompress.selection import build_plan
from tests.policies.test_contract import VARIANTS, batch, run  # noqa: F401 (batch: a fixture)


@pytest.mark.parametrize("model_name", ["random:bert", "random:llama", "random:gpt2"])
def test_restore_undoes_every_policy(model_name, calibration_batches, batch):
    loaded = load_model(model_name)
    base, info = loaded.model, loaded.info
    before = {k: v.clone() for k, v in base.state_dict().items()}
    workspace = ModelWorkspace(base)
    for variant, (_, rules) in VARIANTS.items():  # one after another on the same working copy
        plan = build_plan(info, rules)
        used = apply_plan(workspace.checkout(), plan, Calibration(calibration_batches), info=info)
        fresh = apply_plan(copy.deepcopy(base), plan, Calibration(calibration_batches), info=info)
        assert torch.equal(run(used, batch), run(fresh, batch)), variant
        assert not workspace.matches_base(), variant  # the plan changed the copy, and the check sees it
        workspace.restore()
        assert workspace.matches_base(), variant
        assert torch.equal(run(workspace.model, batch), run(base, batch)), variant
        assert not any(hasattr(m, SMOOTH_ATTR) or hasattr(m, ACT_ATTR) for m in workspace.model.modules()), variant
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # the base is only read


def test_tied_tables_stay_tied(batch):
    loaded = load_model("random:gpt2")  # lm_head and the token table are one parameter
    plan = CompressionPlan.from_dict({"version": 1, "layers": {
        e.tied_to or e.name: {"bits": 4, "group_size": 16} for e in loaded.info.embeddings.values()}})
    workspace = ModelWorkspace(loaded.model)
    used = apply_plan(workspace.checkout(), plan, info=loaded.info)
    fresh = apply_plan(copy.deepcopy(loaded.model), plan, info=loaded.info)
    assert torch.equal(run(used, batch), run(fresh, batch))
    workspace.restore()
    assert workspace.matches_base() and used.lm_head.weight is used.transformer.wte.weight
    used.lm_head.weight = torch.nn.Parameter(used.lm_head.weight.detach().clone())  # untied, same values
    assert not workspace.matches_base()  # the check sees ties, not only values


def test_restore_undoes_what_a_trial_leaves_behind():
    from torch.nn.utils import parametrize

    loaded = load_model("random:bert")
    workspace = ModelWorkspace(loaded.model)
    model = workspace.checkout()
    first, second = (model.get_submodule(n) for n in list(loaded.info.layers)[:2])
    cls, old = type(second), first.weight
    old.grad = torch.ones_like(old)
    old.register_hook(lambda g: g * 0)  # a gradient hook on the parameter object
    old.requires_grad_(False)
    parametrize.register_parametrization(second, "weight", torch.nn.Identity())  # changes the class
    first.register_forward_hook(lambda *a: None)
    first.leftover = 1
    assert not workspace.matches_base()
    workspace.restore()
    new = model.get_submodule(next(iter(loaded.info.layers))).weight
    assert new is not old and new.grad is None and new.requires_grad and new._backward_hooks is None
    assert new.data_ptr() == old.data_ptr()  # the same storage, not a new allocation
    assert type(second) is cls and "parametrizations" not in second._modules
    assert not hasattr(first, "leftover") and not first._forward_hooks
    assert workspace.matches_base()


def test_checkout_restores_only_a_used_copy():
    workspace = ModelWorkspace(load_model("random:bert").model)
    first = workspace.checkout()
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    assert workspace.checkout() is first and workspace.matches_base()


def make_config(tmp_path: Path) -> SearchConfig:
    return SearchConfig.from_dict({
        "model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
        "space": {"quantize": {"bits": [4, 8], "group_size": [16]}}, "tracking": {"uri": "none"},
        "run_dir": str(tmp_path / "run"), "study_name": "tiny"}).resolved(tmp_path)


def plans(info) -> list[str]:
    """Plans that change the copy every way a trial can: grids and masks trained under parametrizations and
    gradient hooks, resized and factorized layers, activation hooks, smoothed weights and smoothing hooks."""
    distill = {"steps": 3, "batch_size": 4, "max_length": 32}
    layers = list(info.layers)
    q, k = layers[0], layers[1]
    return [CompressionPlan.from_dict(p).to_json() for p in (
        {"version": 1, "layers": {n: {"bits": 3, "group_size": 16, "sparsity": 0.5} for n in layers},
         "distill": distill},
        {"version": 1, "layers": {q: {"rank": 0.25}, k: {"bits": 8, "act_bits": 8}}},
        {"version": 1, "layers": {n: {"sparsity": 0.25, "pattern": "structured"} for n in info.structures},
         "distill": distill},
        {"version": 1, "layers": {n: {"bits": 4, "group_size": 16, "quant_method": "gptq"} for n in layers}},
        {"version": 1, "layers": {n: {"bits": 8, "group_size": None, "act_bits": 8, "smooth": 0.5} for n in layers}},
    )]


def test_reused_copy_scores_every_plan_as_a_fresh_copy(tmp_path):
    config = make_config(tmp_path)
    reusing, copying = TrialRunner(config), TrialRunner(config, reuse_model=False)
    assert copying.workspace is None
    for plan in plans(reusing.info) * 2:  # twice: each plan also after every other
        a, b = reusing.run(plan), copying.run(plan)
        assert a.error is None and b.error is None, (a.error, b.error)
        assert a.metrics == b.metrics
    assert reusing.loaded.model.training == copying.loaded.model.training


def test_a_trial_that_fails_midway_does_not_spoil_the_next(tmp_path, monkeypatch):
    from autocompress.policies.quantize import QuantizePolicy

    config = make_config(tmp_path)
    runner = TrialRunner(config)
    half_done = plans(runner.info)[0]  # sparsified, then quantizing fails
    with monkeypatch.context() as m:
        m.setattr(QuantizePolicy, "apply", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        failed = runner.run(half_done)
    assert failed.error.startswith("RuntimeError: boom")
    assert runner.run(half_done).metrics == TrialRunner(config, reuse_model=False).run(half_done).metrics


def test_a_copy_that_cannot_be_put_back_is_replaced(tmp_path, monkeypatch):
    runner = TrialRunner(make_config(tmp_path))
    plan = plans(runner.info)[1]
    first = runner.run(plan)
    broken = runner.workspace
    monkeypatch.setattr(broken, "restore", lambda: (_ for _ in ()).throw(RuntimeError("cannot restore")))
    second = runner.run(plan)
    assert second.error is None and second.metrics == first.metrics
    assert runner.workspace is not broken


def test_the_base_model_and_batches_go_to_backend_device(tmp_path):
    config = make_config(tmp_path)
    runner = TrialRunner(config.model_copy(update={"backend": config.backend.model_copy(update={"device": "cpu"})}))
    assert runner.device == torch.device("cpu") and next(runner.workspace.model.parameters()).device.type == "cpu"
    assert all(t.device.type == "cpu" for b in runner.calibration.batches for t in b.values())
    if not torch.cuda.is_available():  # a worker that sees no GPU (a Ray actor that reserved none) says so
        cuda = config.model_copy(update={"backend": config.backend.model_copy(update={"device": "cuda"})})
        with pytest.raises(UserError, match="sees no CUDA GPU"):
            TrialRunner(cuda)


def test_out_of_memory_puts_the_copy_back_at_once(tmp_path, monkeypatch):
    runner = TrialRunner(make_config(tmp_path))
    plan = plans(runner.info)[1]  # a factorized layer: new modules on the copy

    def exhausted(model):
        raise MemoryError("no room for the evaluation")

    monkeypatch.setattr(runner.evaluator, "evaluate", exhausted)
    outcome = runner.run(plan)
    assert outcome.error.startswith("out of memory: MemoryError")
    assert not runner.workspace.dirty and runner.workspace.matches_base()  # the factors are freed already
