"""Choices beyond the config's lists (spaces/choices.py): refused choices, rank filtering, "dense" prune patterns."""

from __future__ import annotations

import pytest

from autocompress.errors import UserError
from autocompress.plan import resolve_rank
from autocompress.spaces import ConfigSpace
from tests.spaces.support import space, trials


def test_bad_choices_are_user_errors(infos):
    with pytest.raises(UserError, match="space.lowrank.rank"):
        ConfigSpace(space(lowrank={"rank": [None, 1.5]}), infos["bert"])
    with pytest.raises(UserError, match="space.prune.pattern"):
        ConfigSpace(space(prune={"pattern": ["4:2"]}), infos["bert"])


def test_rank_filter_never_grows_a_layer(infos):
    info = infos["bert"]
    cs = ConfigSpace(space(lowrank={"rank": [None, 0.75, 16, 1000]}), info)
    for trial, plan in trials(cs, n=100):
        for name, lp in plan.layers.items():
            li = info.layers[name]
            rank = resolve_rank(lp.rank, li.out_features, li.in_features)
            assert rank <= li.in_features * li.out_features // (li.in_features + li.out_features)
            assert lp.rank not in (1000,)
    # 64x64 attention layers: 0.75 -> 48 > 32 is dropped; 64x256 FFN layers keep it (48 <= 51)
    assert cs.ranks["encoder.layer.0.attention.self.qkv"] == [None, 16]
    assert cs.ranks["encoder.layer.0.intermediate.dense"] == [None, 0.75, 16]
    # with structured pruning able to halve the FFN, 0.75 could grow the shrunk layer: dropped too
    both = ConfigSpace(space(lowrank={"rank": [None, 0.75, 16]}, structured={"sparsity": [0.0, 0.5]}), info)
    assert both.ranks["encoder.layer.0.intermediate.dense"] == [None, 16]


def test_rank_filter_leaving_none_suggests_nothing(infos):
    cs = ConfigSpace(space(lowrank={"rank": [None, 1000]}, quantize={}), infos["bert"])
    trial, plan = next(trials(cs, n=1))
    assert not any(name.endswith(".rank") for name in trial.params)
    assert not any(lp.factorizes for lp in plan.layers.values())


def test_nm_pattern_without_unstructured_can_stay_dense(infos):
    cs = ConfigSpace(space(prune={"sparsity": [0.0, 0.5], "pattern": ["2:4"]}), infos["gpt2"])
    kinds = set()
    for trial, plan in trials(cs, n=50):
        assert set(trial.params.values()) <= {"dense", "2:4"}
        kinds |= {lp.pattern for lp in plan.layers.values()}
        assert all(lp.sparsity == 0.5 for lp in plan.layers.values())
        kinds |= {"dense"} if len(plan) < len(cs.units) else set()
    assert kinds == {"2:4", "dense"}
    always = ConfigSpace(space(prune={"sparsity": [0.5], "pattern": ["2:4"]}), infos["gpt2"])
    trial, plan = next(trials(always, n=1))
    assert trial.params == {} and len(plan) == len(always.units)
