"""ConfigSpace: trials become valid plans, params replay exactly, the space holds only the inventory."""

from __future__ import annotations

import pytest

from autocompress.errors import UserError
from autocompress.plan import LayerPlan
from autocompress.spaces import ConfigSpace, SearchSpace
from autocompress.validation import validate_plan
from tests.spaces.support import space, trials

FIELDS = set(LayerPlan.__dataclass_fields__)


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("share", ["group", "layer"])
def test_random_trials_give_valid_plans_that_replay(infos, arch, share):
    info = infos[arch]
    cs = ConfigSpace(space(share), info)
    assert isinstance(cs, SearchSpace)
    units = cs.units
    seen_structured = seen_rank = False
    for trial, plan in trials(cs):
        validate_plan(plan, info)
        assert cs.plan_from_params(trial.params) == plan
        for name in trial.params:
            unit, field = name.rsplit(".", 1)
            assert field in FIELDS and unit in units
        for name, lp in plan.layers.items():
            assert not (lp.factorizes and lp.sparsity > 0 and lp.pattern != "structured"), name
            seen_structured |= lp.pattern == "structured"
            seen_rank |= lp.factorizes
        if share == "group":
            for group, members in info.groups.items():
                entries = [plan.layers.get(m, LayerPlan()) for m in members]
                assert len({e for e in entries}) == 1, group  # q/k/v (gate/up) share every setting
                assert f"{group}.bits" in trial.params
    assert seen_structured and seen_rank


def test_plan_from_params_rejects_params_that_do_not_fit(infos):
    cs = ConfigSpace(space(quantize={"bits": [4, 8]}), infos["bert"])
    with pytest.raises(UserError, match="not found"):
        cs.plan_from_params({})
    params = {f"{u}.bits": 4 for u in cs.units}
    assert {lp.bits for lp in cs.plan_from_params(params).layers.values()} == {4}
    with pytest.raises(UserError, match="not in"):
        cs.plan_from_params({**params, "encoder.layer.0.output.dense.bits": 3})


def test_sample_needs_only_the_inventory(infos):
    """The space holds the inventory, not a model: a pickled ModelInfo is all a worker needs."""
    import pickle

    import torch

    info = pickle.loads(pickle.dumps(infos["bert"]))
    cs = ConfigSpace(space(), info)
    assert not any(isinstance(v, (torch.nn.Module, torch.Tensor)) for v in vars(cs).values())
    trial, plan = next(trials(cs, n=1))
    assert cs.plan_from_params(trial.params) == plan
    pickle.dumps(cs)
