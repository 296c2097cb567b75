"""Budgeted allocation: the knapsack against brute force, the bound it never breaks, the seeded plans."""

from __future__ import annotations

import itertools
import random

import pytest

from autocompress.search.seeding.allocation import least_drop


def brute_force(groups, required):
    best = None
    for pick in itertools.product(*(range(len(g)) for g in groups)):
        saved = sum(g[i][1] for g, i in zip(groups, pick))
        drop = sum(g[i][0] for g, i in zip(groups, pick))
        if saved >= required and (best is None or drop < best[0] - 1e-12):
            best = (drop, pick)
    return best


def test_least_drop_matches_brute_force_on_random_instances():
    rng = random.Random(0)
    for _ in range(200):
        groups = [[(0.0, 0)] + [(rng.uniform(-0.001, 0.05), rng.randrange(1, 5000)) for _ in range(rng.randrange(1, 4))]
                  for _ in range(rng.randrange(1, 6))]
        required = rng.randrange(0, 12000)
        pick = least_drop(groups, required)
        expected = brute_force(groups, required)
        if expected is None:
            assert pick is None
            continue
        assert sum(g[i][1] for g, i in zip(groups, pick)) >= required
        assert abs(sum(g[i][0] for g, i in zip(groups, pick)) - expected[0]) < 1e-9


def test_coarse_steps_never_break_the_bound():
    rng = random.Random(1)
    for _ in range(100):
        groups = [[(0.0, 0)] + [(rng.uniform(0, 0.05), rng.randrange(1, 10**6)) for _ in range(3)] for _ in range(8)]
        required = rng.randrange(1, 3 * 10**6)
        pick = least_drop(groups, required, max_states=5)
        if pick is not None:
            assert sum(g[i][1] for g, i in zip(groups, pick)) >= required


def test_no_budget_takes_the_least_drop_and_an_impossible_one_none():
    groups = [[(0.0, 0), (-0.001, 10)], [(0.0, 0), (0.2, 10)]]
    assert least_drop(groups, 0) == [1, 0]  # a choice that measured better than the reference is taken
    assert least_drop(groups, 21) is None
    assert least_drop(groups, 20) == [1, 1]


FORMATS = {"quantize": {"bits": [2, 4, 8, None], "group_size": [32, 128], "act_bits": [8, None]},
           "embeddings": {"bits": [8, None], "group_size": [32]}}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from tests.search.seeding.test_sensitivity import measure_twice

    _, space, (sens, _), _ = measure_twice(tmp_path_factory.mktemp("alloc"), FORMATS)
    return space, sens


def predicted(space, sens, plan):
    """The summed drop of the measured choices (FORMATS) a plan consists of."""
    quantize = sum(sens.layers[u][f"quantize bits={e.bits} group_size={e.group_size} act_bits={e.act_bits}"]
                   for u, members in space.technique_units["quantize"].items()
                   for e in [plan.layers.get(members[0])] if e is not None and e.bits is not None)
    tables = sum(sens.layers[t]["embeddings bits=8"] for t in space.technique_units["embeddings"]
                 if plan.layers.get(t) is not None)
    return quantize + tables


def test_each_format_combination_is_measured_with_activations_off(measured):
    space, sens = measured
    from autocompress.search.seeding.sensitivity import jobs

    expected = {f"quantize bits={b} group_size={g} act_bits={a}" for b in (2, 4, 8) for g in (32, 128)
                for a in (8, None)}
    assert {u: set(d) for u, d in sens.layers.items()} == {
        **{u: expected for u in space.technique_units["quantize"]},
        **{t: {"embeddings bits=8"} for t in space.technique_units["embeddings"]}}
    plans = jobs(space)
    assert plans[("", "reference")].is_empty  # bits and act_bits off everywhere
    unit, label = next(k for k in plans if k[1].endswith("act_bits=8"))
    quantized = {n for n, e in plans[(unit, label)].layers.items() if e.act_bits == 8}
    assert quantized == set(space.technique_units["quantize"][unit])  # only the measured unit's activations
    for unit in space.technique_units["quantize"]:  # a coarser group (fewer scales) saves more bytes
        saved = sens.saved_bytes[unit]
        assert saved["quantize bits=4 group_size=128 act_bits=None"] > saved["quantize bits=4 group_size=32 act_bits=None"]
        assert saved["quantize bits=4 group_size=32 act_bits=8"] == saved["quantize bits=4 group_size=32 act_bits=None"]


def test_budget_plans_fit_each_uniform_baseline_at_no_more_predicted_drop(measured):
    import optuna

    from autocompress.evaluators.size import plan_size
    from autocompress.search.seeding.allocation import budget_params

    space, sens = measured
    seeds = budget_params(space, sens, space.info)
    limits = {round(plan_size(p, space.info).total_bytes / 1e6, 2): p for p in space.uniform_plans().values()}
    assert seeds and all(label.startswith("sensitivity size<=") for label in seeds)
    for label, params in seeds.items():
        limit = float(label.removeprefix("sensitivity size<=").removesuffix("MB"))
        plan = space.sample(optuna.trial.FixedTrial(params))  # replayable exactly
        assert plan_size(plan, space.info).total_bytes / 1e6 <= limit + 0.005
        assert predicted(space, sens, plan) <= predicted(space, sens, limits[limit]) + 1e-12

def test_a_search_starts_from_the_budget_plans_once_each(tmp_path):
    import json

    from autocompress.search.driver import run_search
    from autocompress.search.rundir.reader import RunDir
    from tests.support import make_config

    config = make_config(tmp_path, space=FORMATS, budget={"n_trials": 14}, backend={"name": "local"},
                         tracking={"uri": "none"}, sensitivity={"thresholds": [0.0]})
    run_search(config, show_progress=False)
    seeded = [t for t in RunDir.open(tmp_path / "run").trials if "baseline" in t.user_attrs]
    labels = [t.user_attrs["baseline"] for t in seeded]
    assert any(label.startswith("sensitivity size<=") for label in labels)
    assert len({json.dumps(t.params, sort_keys=True, default=str) for t in seeded}) == len(seeded)

    off = make_config(tmp_path / "off", space=FORMATS, budget={"n_trials": 14}, backend={"name": "local"},
                      tracking={"uri": "none"}, sensitivity={"thresholds": [0.0], "budgets": False})
    run_search(off, show_progress=False)
    assert not any(t.user_attrs.get("baseline", "").startswith("sensitivity size")
                   for t in RunDir.open(tmp_path / "off" / "run").trials)


def test_latency_budget_plans_are_no_slower_than_their_baseline(measured, tmp_path):
    import optuna

    from autocompress.search.seeding.allocation import budget_params
    from autocompress.search.plan_targets import plan_latency_model
    from tests.support import make_config

    import yaml

    from autocompress.hardware.profile import PROFILE_DIR

    space, sens = measured
    # cpu-local with an int8 kernel that also takes FORMATS' groups of 32 and 128 inputs (the real one takes one
    # scale per output channel only: grouped W8A8 would run dense, and no baseline would be faster)
    data = yaml.safe_load((PROFILE_DIR / "cpu-local.yaml").read_text())
    data["kernels"]["w8a8"]["groups"] = [32, 128]
    (tmp_path / "grouped.yaml").write_text(yaml.safe_dump(data))
    model, workload = plan_latency_model(make_config(tmp_path, space=FORMATS,
                                                      target={"profile": str(tmp_path / "grouped.yaml")}))
    seeds = {k: v for k, v in budget_params(space, sens, space.info, (model, workload)).items() if "latency" in k}
    assert seeds, "int8 activations make some uniform baselines faster than the reference"
    for label, params in seeds.items():
        limit = float(label.removeprefix("sensitivity latency<=").removesuffix("ms"))
        plan = space.sample(optuna.trial.FixedTrial(params))
        assert model.predict(plan, space.info, workload).total_ms <= limit + 0.005



def test_knapsack_plans_one_per_baseline_within_its_bytes_and_the_seeds_among_them(measured):
    import optuna

    from autocompress.evaluators.size import plan_size
    from autocompress.search.seeding.allocation import budget_params, knapsack_plans

    space, sens = measured
    plans = knapsack_plans(space, sens, space.info)
    uniform = space.uniform_plans()
    assert [p.baseline for p in plans] == list(uniform)  # each baseline's bytes can be met: it is such a plan
    for p in plans:
        limit = plan_size(uniform[p.baseline], space.info).total_bytes
        assert p.cost == "size" and p.budget == limit * 1e-6 and p.label == f"sensitivity size<={p.budget:.2f}MB"
        assert plan_size(p.plan, space.info).total_bytes <= limit
        assert space.sample(optuna.trial.FixedTrial(p.params)) == p.plan  # replayable exactly
        assert p.predicted_drop == pytest.approx(predicted(space, sens, p.plan), abs=1e-12)
        assert p.predicted_drop <= predicted(space, sens, uniform[p.baseline]) + 1e-12
    seeds = budget_params(space, sens, space.info)  # the seeds: the same plans less uniform ones and repeats
    assert seeds and all(any(p.label == label and p.params == params for p in plans) for label, params in seeds.items())
    assert len(seeds) < len(plans)
