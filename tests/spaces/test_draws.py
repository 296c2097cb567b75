"""Draws (spaces/draws.py): conditional params, constants, distillation, SmoothQuant and per-width group sizes."""

from __future__ import annotations

import pytest

from autocompress.errors import UserError
from autocompress.plan import LayerPlan
from autocompress.spaces import ConfigSpace
from autocompress.validation import validate_plan
from tests.spaces.support import DISTILL, space, trials


def test_single_choices_are_constants_not_params(infos):
    cs = ConfigSpace(space(quantize={"bits": [4], "group_size": [64]}), infos["bert"])
    trial, plan = next(trials(cs, n=1))
    assert trial.params == {}
    assert {lp.bits for lp in plan.layers.values()} == {4}
    assert {lp.group_size for lp in plan.layers.values()} == {64}


def test_conditional_params(infos):
    cs = ConfigSpace(space(), infos["llama"])
    for trial, _ in trials(cs, n=100):
        p = trial.params
        for name, value in p.items():
            unit, field = name.rsplit(".", 1)
            if field == "bits":
                assert (f"{unit}.group_size" in p) == (value is not None)
                assert (f"{unit}.quant_method" in p) == (value is not None)
            if field == "rank":
                assert (f"{unit}.rank_method" in p) == (value is not None)
                assert (value is None) or f"{unit}.pattern" not in p  # factorized units are not pruned
            if field == "sparsity" and value == 0.0:
                assert f"{unit}.prune_method" not in p
            if field == "pattern":
                assert (f"{unit}.sparsity" in p) == (value == "unstructured")


# ---- distillation in the space ------------------------------------------------------------------------------
def test_distill_is_sampled_define_by_run_into_the_plan(infos):
    cs = ConfigSpace(space(quantize={"bits": [4, 8]}, distill=DISTILL), infos["bert"])
    seen_steps = set()
    for trial, plan in trials(cs, n=60):
        d = {k.split(".", 1)[1]: v for k, v in trial.params.items() if k.startswith("distill.")}
        seen_steps.add(d["steps"])
        if d["steps"] == 0:  # the other fields are drawn only when it trains
            assert plan.distill is None and set(d) == {"steps"}
        else:  # single choices (temperature, alpha) and scalars are constants, never suggested
            assert set(d) == {"steps", "lr", "beta", "layers"}
            c = plan.distill
            assert (c.steps, c.lr, c.beta, c.layers) == (d["steps"], d["lr"], d["beta"], d["layers"])
            assert (c.temperature, c.alpha, c.batch_size, c.max_length, c.eval_every) == (2.0, 1.0, 16, 128, 25)
        assert cs.plan_from_params(trial.params) == plan
    assert seen_steps == {0, 100, 200}


def test_distill_constant_steps_is_not_a_param(infos):
    cs = ConfigSpace(space(quantize={"bits": [4, 8]}, distill={"steps": 50, "lr": 1e-3, "beta": 0.0,
                                                                      "layers": "all"}), infos["bert"])
    trial, plan = next(trials(cs, n=1))
    assert not any(k.startswith("distill.") for k in trial.params)
    assert plan.distill.steps == 50 and plan.distill.lr == 1e-3 and plan.distill.beta == 0.0


@pytest.mark.parametrize("bad, words", [
    ({"steps": [-1, 10]}, "steps=-1"), ({"lr": [0.0]}, "lr=0"), ({"steps": []}, "at least one choice"),
    ({"alpha": [0.0, 1.0], "beta": 0.0}, "nothing to train"), ({"eval_every": 0}, "eval_every"),
    ({"layers": ["first"]}, "layers"), ({"stepz": [1]}, "stepz")])
def test_distill_space_errors_name_the_field(bad, words):
    from autocompress.config import SearchConfig

    with pytest.raises(UserError, match="space.distill") as err:
        SearchConfig.from_dict({"model": {"name": "x"}, "space": {"quantize": {}, "distill": bad}})
    assert words in str(err.value)


def test_kmeans_is_a_method_choice_and_refuses_distillation(infos):
    cs = ConfigSpace(space(quantize={"bits": [3, 4], "method": ["kmeans"]}), infos["bert"])
    plan = next(p for _, p in trials(cs, n=1))
    assert plan.layers and all(e.quant_method == "kmeans" for e in plan.layers.values())
    from autocompress.config import SearchConfig

    with pytest.raises(UserError, match="kmeans with space.distill.*drop kmeans or space.distill"):
        SearchConfig.from_dict({"model": {"name": "x"}, "space": {"quantize": {"method": ["rtn", "kmeans"]},
                                                                  "distill": {"steps": [0, 50]}}})


# ---- SmoothQuant in the space -------------------------------------------------------------------------------
def test_smooth_is_drawn_only_for_units_with_int8_activations(infos):
    info = infos["llama"]
    cs = ConfigSpace(space(quantize={"bits": [8, None], "group_size": [None], "act_bits": [None, 8],
                                     "smooth": [None, 0.5, 0.85]},
                           lowrank={"rank": [None, 0.25]}), info)
    seen = set()
    for trial, plan in trials(cs, n=120):
        validate_plan(plan, info)
        assert cs.plan_from_params(trial.params) == plan
        p = trial.params
        for unit, members in cs.technique_units["quantize"].items():
            factorized = [m for m in members if m in plan.layers and plan.layers[m].factorizes]
            drawn = p.get(f"{unit}.act_bits") == 8 and len(factorized) < len(members)
            assert (f"{unit}.smooth" in p) == drawn, unit
            for m in members:
                entry = plan.layers.get(m, LayerPlan())
                want = p.get(f"{unit}.smooth") if drawn and m not in factorized else None
                assert entry.smooth == want, m
                seen.add(entry.smooth)
    assert seen == {None, 0.5, 0.85}
    for trial, _ in trials(ConfigSpace(space(), info), n=40):  # no `smooth` in the config: no such param
        assert not any(name.endswith(".smooth") for name in trial.params)


def test_a_tied_lm_head_is_never_smoothed(infos):
    info = infos["gpt2"]
    cs = ConfigSpace(space("layer", quantize={"targets": ["lm_head", "re:c_fc$"], "bits": [8], "group_size": [None],
                                              "act_bits": [8], "smooth": [0.5, 0.7]}), info)
    for trial, plan in trials(cs, n=10):
        validate_plan(plan, info)
        assert "lm_head.smooth" not in trial.params and plan.layers["lm_head"].smooth is None
        assert all(lp.smooth is not None for n, lp in plan.layers.items() if n != "lm_head")


@pytest.mark.parametrize("bad", [[0.0], [1.5], [None, -0.5]])
def test_smooth_choices_out_of_range_are_refused(bad):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="smooth"):
        space(quantize={"act_bits": [8], "smooth": bad})


# ---- group sizes per bit width ------------------------------------------------------------------------------
def test_group_sizes_per_bit_width(infos):
    """`group_size: {8: [null], 4: [32, 64]}`: 8-bit units are per channel without a param, 4-bit units draw
    their group under `<unit>.group_size_4bit`; the uniform baselines take each width's first choice."""
    cs = ConfigSpace(space(quantize={"bits": [8, 4, None], "group_size": {8: [None], 4: [32, 64]}}),
                     infos["llama"])
    seen = set()
    for trial, plan in trials(cs, n=60):
        for unit in cs.technique_units["quantize"]:
            bits = trial.params[f"{unit}.bits"]
            assert f"{unit}.group_size" not in trial.params and f"{unit}.group_size_8bit" not in trial.params
            assert (f"{unit}.group_size_4bit" in trial.params) == (bits == 4)
        for entry in plan.layers.values():
            seen.add((entry.bits, entry.group_size))
            assert entry.bits != 8 or entry.group_size is None
    assert seen == {(8, None), (4, 32), (4, 64)}
    uniform = cs.uniform_plans()
    assert {(e.bits, e.group_size) for e in uniform["quantize bits=8"].layers.values()} == {(8, None)}
    assert {(e.bits, e.group_size) for e in uniform["quantize bits=4"].layers.values()} == {(4, 32)}


@pytest.mark.parametrize("groups, words", [({8: [None]}, "no choices for bits [4]"),
                                           ({8: [None], 4: [64], 3: [64]}, "names bits [3]"),
                                           ({8: [None], 4: []}, "for bits 4 is empty")])
def test_group_sizes_per_bit_width_must_name_each_width(groups, words):
    with pytest.raises(Exception, match=words.replace("[", r"\[").replace("]", r"\]")):
        space(quantize={"bits": [8, 4, None], "group_size": groups})
