"""Uniform baselines (spaces/baselines.py): one per compressing choice, their params reproduce their plans."""

from __future__ import annotations

import pytest

from autocompress.config import SpaceSection
from autocompress.loading import load_model
from autocompress.spaces import ConfigSpace
from autocompress.validation import validate_plan
from tests.spaces.support import DISTILL, space


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_uniform_plans(infos, arch):
    info = infos[arch]
    plans = ConfigSpace(space(), info).uniform_plans()
    # act_bits offers [None, 8]: each weight-bit baseline once per activation format
    assert {"quantize bits=4 act_bits=None", "quantize bits=4 act_bits=8", "quantize bits=8 act_bits=None",
            "quantize bits=8 act_bits=8", "prune sparsity=0.5 pattern=unstructured",
            "prune sparsity=0.5 pattern=2:4", "structured sparsity=0.25", "lowrank rank=0.5"} <= set(plans)
    for name, plan in plans.items():
        assert not plan.is_empty, name
        validate_plan(plan, info)
    for act in (None, 8):
        layers = plans[f"quantize bits=4 act_bits={act}"].layers.values()
        assert {lp.bits for lp in layers} == {4} and {lp.act_bits for lp in layers} == {act}
    assert len(plans["quantize bits=4 act_bits=8"]) == len(info.targets_by_default())
    one_format = ConfigSpace(space(quantize={"bits": [4, 8], "act_bits": [8]}), info).uniform_plans()
    assert set(one_format) == {"quantize bits=4", "quantize bits=8"}  # labels as before with one format
    assert "quantize bits=4" in ConfigSpace(space(), info).main_choices()  # what sensitivity measures
    assert {lp.pattern for lp in plans["prune sparsity=0.5 pattern=2:4"].layers.values()} == {"2:4"}
    assert "lowrank rank=1000" not in plans  # fits no layer


def test_uniform_params_reproduce_the_uniform_baselines():
    from autocompress.config import SpaceSection

    info = load_model("random:bert").info
    space = ConfigSpace(SpaceSection.model_validate({
        "quantize": {"bits": [3, 8, None], "group_size": [16, 64]},
        "structured": {"sparsity": [0.0, 0.5]}}), info)
    params = space.uniform_params()
    plans = space.uniform_plans()
    assert set(params) == set(plans) == {"quantize bits=3", "quantize bits=8", "structured sparsity=0.5"}
    for label, p in params.items():
        assert space.plan_from_params(p) == plans[label]  # other techniques switched off


def test_uniform_params_switch_off_techniques_that_share_unit_names():
    """Quantize and prune decide on the same units (layer names): the prune baseline must not quantize."""
    from autocompress.config import SpaceSection

    info = load_model("random:bert").info
    space = ConfigSpace(SpaceSection.model_validate({
        "quantize": {"bits": [2, 8, None]}, "prune": {"sparsity": [0.0, 0.5]}}), info)
    params = space.uniform_params()
    plans = space.uniform_plans()
    assert set(params) == {"quantize bits=2", "quantize bits=8", "prune sparsity=0.5 pattern=unstructured"}
    for label, p in params.items():
        assert space.plan_from_params(p) == plans[label]
    prune = space.plan_from_params(params["prune sparsity=0.5 pattern=unstructured"])
    assert all(e.bits is None and e.sparsity == 0.5 for e in prune.layers.values())


def test_uniform_quantize_baselines_take_the_embedding_tables_along(infos):
    info = infos["bert"]
    cs = ConfigSpace(space(quantize={"bits": [3, 4, 8, None]}, embeddings={"bits": [8, 4, None]}), info)
    plans, params = cs.uniform_plans(), cs.uniform_params()
    assert set(plans) == set(params) == {"quantize bits=3", "quantize bits=4", "quantize bits=8"}
    for label, p in params.items():
        assert cs.plan_from_params(p) == plans[label]
    word = "embeddings.word_embeddings"
    assert plans["quantize bits=8"].layers[word].bits == 8 and plans["quantize bits=4"].layers[word].bits == 4
    assert word not in plans["quantize bits=3"].layers  # 3 is not an embedding choice: the tables stay
    assert {"embeddings bits=8", "embeddings bits=4"} <= set(cs.main_choices())  # sensitivity measures them
    alone = ConfigSpace(space(embeddings={"bits": [4, None]}), info)
    assert set(alone.uniform_plans()) == {"embeddings bits=4"}


def test_uniform_baselines_follow_the_configs_order(infos):
    """The study runs the baselines in this order: a config listing bits from 8 down (as `auto` writes it)
    runs the mildest plans first; the quickstart's [4, 8] keeps its order."""
    from pathlib import Path

    import yaml

    info = infos["bert"]
    down = ConfigSpace(space(quantize={"bits": [8, 6, 4, None]}, embeddings={"bits": [8, 4, None]}), info)
    assert list(down.uniform_params()) == ["quantize bits=8", "quantize bits=6", "quantize bits=4"]
    with open(Path(__file__).parents[2] / "examples" / "quickstart.yaml", encoding="utf-8") as fh:
        quick = SpaceSection.model_validate(yaml.safe_load(fh)["space"])
    assert list(ConfigSpace(quick, info).uniform_params()) == [
        "quantize bits=4 act_bits=8", "quantize bits=4 act_bits=None", "quantize bits=8 act_bits=8",
        "quantize bits=8 act_bits=None"]


def test_uniform_baselines_do_not_distill(infos):
    cs = ConfigSpace(space(quantize={"bits": [4, 8]}, distill=DISTILL), infos["bert"])
    params = cs.uniform_params()
    assert params and all(p["distill.steps"] == 0 for p in params.values())
    assert all(cs.plan_from_params(p).distill is None for p in params.values())
    assert all(plan.distill is None for plan in cs.uniform_plans().values())


def test_uniform_baselines_take_the_first_smooth_choice(infos):
    info = infos["llama"]
    cs = ConfigSpace(space(quantize={"bits": [8, None], "group_size": [None], "act_bits": [None, 8],
                                     "smooth": [0.5, None]}), info)
    plans, params = cs.uniform_plans(), cs.uniform_params()
    assert {lp.smooth for lp in plans["quantize bits=8 act_bits=8"].layers.values()} == {0.5}
    assert {lp.smooth for lp in plans["quantize bits=8 act_bits=None"].layers.values()} == {None}
    for label, p in params.items():
        assert cs.plan_from_params(p) == plans[label]
