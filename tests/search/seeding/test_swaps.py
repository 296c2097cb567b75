"""Swap seeds: which units a swap moves, the bytes it never adds, and the seeds a search starts from."""

from __future__ import annotations

import optuna
import pytest

from autocompress.config import SpaceSection
from autocompress.evaluators.size import plan_size
from autocompress.loading import load_model
from autocompress.search.seeding.sensitivity import Sensitivity, measured_choices, single_unit_plan
from autocompress.search.seeding.swaps import best_swaps, swap_params
from autocompress.spaces import ConfigSpace

SPACE = {"share": "group", "quantize": {"bits": [6, 4, 3, 2], "group_size": [32]}}
# block 0 is sensitive, block 1 barely: drop per bit width
DROPS = {0: {6: 0.0, 4: 0.1, 3: 1.0, 2: 5.0}, 1: {6: 0.0, 4: 0.01, 3: 0.02, 2: 0.05}}


def synthetic(space: ConfigSpace, drops=DROPS) -> Sensitivity:
    """A Sensitivity with `drops` by block and the real bytes each single-unit plan saves."""
    choices = measured_choices(space)
    reference = plan_size(single_unit_plan(space, None, {})[1], space.info).total_bytes
    sens = Sensitivity("kl", 0.0, "synthetic")
    for unit in space.units:
        block = int(unit.split(".")[2])
        for label, (_, want) in choices.items():
            sens.layers.setdefault(unit, {})[label] = drops[block][want["bits"]]
            alone = single_unit_plan(space, unit, want)[1]
            sens.saved_bytes.setdefault(unit, {})[label] = reference - plan_size(alone, space.info).total_bytes
    return sens


@pytest.fixture(scope="module")
def space():
    return ConfigSpace(SpaceSection.model_validate(SPACE), load_model("random:llama").info)


def bits_of(plan, space):
    return {u: plan.layers[members[0]].bits for u, members in space.units.items()}


def test_a_swap_raises_the_unit_that_gains_most_and_lowers_one_of_its_shape_that_loses_least(space):
    sens = synthetic(space)
    qkv = [u for u in space.units if u.endswith("qkv")]
    (score, up, milder, down, harsher), = best_swaps(qkv, "quantize bits=3", sens)
    assert (up, milder, down, harsher) == (qkv[0], "quantize bits=4", qkv[1], "quantize bits=2")
    assert score == pytest.approx((1.0 - 0.1) - (0.05 - 0.02))
    # from 4 bits, 6 costs two bits a weight: only 2 bits saves as much (3 bits would add bytes, though the
    # drops favour it)
    (_, _, milder, _, harsher), = best_swaps(qkv, "quantize bits=4", sens)
    assert (milder, harsher) == ("quantize bits=6", "quantize bits=2")


def test_no_swap_when_every_gain_is_below_the_loss(space):
    flat = {b: {6: 0.0, 4: 0.1, 3: 0.5, 2: 2.0} for b in (0, 1)}  # convex: lowering costs more than raising gains
    sens = synthetic(space, flat)
    assert best_swaps([u for u in space.units if u.endswith("qkv")], "quantize bits=3", sens) == []
    assert swap_params(space, sens, space.info, [1, 4]) == {}


def test_swap_seeds_move_one_unit_up_and_one_down_per_swap_at_no_more_bytes(space):
    sens = synthetic(space)
    seeds = swap_params(space, sens, space.info, [1, 4, 9])
    uniform = space.uniform_plans()
    # 6 bits has no milder choice, 2 bits no harsher; 9 swaps take the 4 there are (one per shape): a repeat
    assert sorted(seeds) == sorted(f"sensitivity swaps={k} quantize bits={b}" for k in (1, 4) for b in (4, 3))
    for label, params in seeds.items():
        k, baseline = int(label.split()[1].removeprefix("swaps=")), label.split(" ", 2)[2]
        plan = space.sample(optuna.trial.FixedTrial(params))  # replayable exactly
        base = uniform[baseline]
        assert plan_size(plan, space.info).total_bytes <= plan_size(base, space.info).total_bytes
        before, after = bits_of(base, space), bits_of(plan, space)
        moved = {u for u in before if before[u] != after[u]}
        assert len(moved) == 2 * k
        assert all(after[u] > before[u] for u in moved if ".layers.0." in u)  # the sensitive block goes up
        assert all(after[u] == 2 for u in moved if ".layers.1." in u)  # the other down, to 2 bits


def test_a_search_starts_from_the_swap_seeds_unless_switched_off(tmp_path):
    from autocompress.search.driver import run_search
    from autocompress.search.rundir.reader import RunDir
    from autocompress.search.seeding.sensitivity import FILE, fingerprint, quality_metric
    from tests.support import make_config

    labels = {}
    for name, swaps in (("on", [1]), ("off", [])):
        config = make_config(tmp_path / name, model={"name": "random:llama"}, space=SPACE, budget={"n_trials": 12},
                             backend={"name": "local"}, tracking={"uri": "none"},
                             objectives=["minimize kl", "minimize size_mb"], sensitivity={"budgets": False, "swaps": swaps})
        sens = synthetic(ConfigSpace(config.space, load_model("random:llama").info))
        sens.fingerprint = fingerprint(config, quality_metric(config, "causal-lm"))  # the cache a measurement would leave: read, not measured
        (tmp_path / name / "run").mkdir(parents=True)
        sens.save(tmp_path / name / "run" / FILE)
        run_search(config, show_progress=False)
        labels[name] = {t.user_attrs.get("baseline") for t in RunDir.open(tmp_path / name / "run").trials}
    assert {"sensitivity swaps=1 quantize bits=4", "sensitivity swaps=1 quantize bits=3"} <= labels["on"]
    assert not any(str(label).startswith("sensitivity swaps") for label in labels["off"])
