"""Per-unit sensitivity: the single-unit plans, the measurement on a real backend, the cache, the seeds."""

from __future__ import annotations

import optuna
import pytest

from autocompress.loading import load_model
from autocompress.search.workers.backends import make_backend
from autocompress.search.seeding.sensitivity import Sensitivity, jobs, load_or_measure, seed_params
from autocompress.spaces import ConfigSpace
from tests.support import make_config

SPACE = {"quantize": {"bits": [2, 8, None], "group_size": [32]}, "prune": {"sparsity": [0.0, 0.5]}}


def measure_twice(tmp, space: dict) -> tuple:
    """(config, space, (sensitivity, measured now) of a first and a second `load_or_measure` into `tmp`) on a
    random BERT with the local backend."""
    config = make_config(tmp, space=space, tracking={"uri": "none"}, backend={"name": "local"})
    backend = make_backend(config)
    info = backend.start()
    config_space = ConfigSpace(config.space, info)
    try:
        first = load_or_measure(config, backend, info, config_space, tmp)
        second = load_or_measure(config, backend, info, config_space, tmp)
    finally:
        backend.close()
    return config, config_space, first, second


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sens")
    config, space, (sens, fresh), (again, fresh_again) = measure_twice(tmp, SPACE)
    return config, space, sens, fresh, again, fresh_again, tmp


def test_one_plan_per_unit_and_choice_plus_the_reference():
    info = load_model("random:bert").info
    from autocompress.config import SpaceSection

    space = ConfigSpace(SpaceSection.model_validate({"quantize": {"bits": [4, 8]}}), info)
    plans = jobs(space)
    units = space.technique_units["quantize"]
    assert len(plans) == 1 + 1 * len(units)  # bits 8 is the mildest here (no None): only bits=4 is a change
    reference = plans[("", "reference")]
    assert {e.bits for e in reference.layers.values()} == {8}
    unit = next(iter(units))
    single = plans[(unit, "quantize bits=4")]
    changed = {n for n, e in single.layers.items() if e.bits == 4}
    assert changed == set(units[unit])  # only that unit's layers


def test_group_sizes_per_bit_width_are_measured_per_width():
    """With `group_size` per bit width, each width is measured at its own group sizes, drawn under its own
    param (`group_size_4bit`), and labelled with the plain field name."""
    from autocompress.config import SpaceSection
    from autocompress.search.seeding.sensitivity import measured_choices

    info = load_model("random:bert").info
    space = ConfigSpace(SpaceSection.model_validate(
        {"quantize": {"bits": [8, 4, None], "group_size": {8: [None], 4: [32, 64]}}}), info)
    choices = measured_choices(space)
    assert choices == {"quantize bits=8": ("quantize", {"bits": 8}),
                       "quantize bits=4 group_size=32": ("quantize", {"bits": 4, "group_size_4bit": 32}),
                       "quantize bits=4 group_size=64": ("quantize", {"bits": 4, "group_size_4bit": 64})}
    plans = jobs(space)
    unit = next(iter(space.technique_units["quantize"]))
    assert {e.group_size for n, e in plans[(unit, "quantize bits=4 group_size=64")].layers.items()
            if e.bits == 4} == {64}
    assert {e.group_size for e in plans[(unit, "quantize bits=8")].layers.values() if e.bits == 8} == {None}


def test_measurement_and_cache(measured):
    config, space, sens, fresh, again, fresh_again, tmp = measured
    assert fresh and not fresh_again and again == sens and (tmp / "sensitivity.json").is_file()
    assert sens.metric == "fidelity" and sens.reference == pytest.approx(1.0, abs=1e-6)
    units = space.units
    assert set(sens.layers) == set(units)
    for unit, drops in sens.layers.items():
        assert set(drops) == {"quantize bits=2", "quantize bits=8", "prune sparsity=0.5 pattern=unstructured"}
        assert sens.saved_bytes[unit]["quantize bits=2"] > sens.saved_bytes[unit]["quantize bits=8"] > 0
    mean = {label: sum(d[label] for d in sens.layers.values()) / len(units) for label in ("quantize bits=2",
                                                                                          "quantize bits=8")}
    assert mean["quantize bits=2"] > mean["quantize bits=8"]  # fewer bits lose more
    assert Sensitivity.load(tmp / "sensitivity.json") == sens


def test_seeds_are_valid_params_ordered_by_threshold(measured):
    _, space, sens, *_ = measured
    seeds = seed_params(space, sens, [0.0, 1e-5, 1.0])
    assert seeds, "at least the permissive threshold compresses something"
    sizes = []
    for label, params in seeds.items():
        plan = space.sample(optuna.trial.FixedTrial(params))  # replayable exactly
        assert not plan.is_empty
        from autocompress.evaluators.size import plan_size

        sizes.append(plan_size(plan, space.info).total_bytes)
    assert sizes == sorted(sizes, reverse=True)  # a looser threshold never gives a bigger plan
    loosest = space.sample(optuna.trial.FixedTrial(list(seeds.values())[-1]))
    assert {e.bits for e in loosest.layers.values() if e.bits} == {2}  # at threshold 1.0 every unit takes 2 bits


def test_a_search_seeded_from_sensitivity(tmp_path):
    """`sensitivity: {thresholds: [...]}` measures once, caches, logs it, and enqueues one plan per threshold
    right after the uniform baselines; `seed: false` turns it off for comparison."""
    from autocompress.search.driver import run_search
    from autocompress.search.rundir.reader import RunDir

    config = make_config(tmp_path, space=SPACE, budget={"n_trials": 8}, backend={"name": "local"},
                         sensitivity={"thresholds": [0.0, 1.0]})
    run_search(config, show_progress=False)
    run = RunDir.open(tmp_path / "run")
    labels = [t.user_attrs.get("baseline") for t in run.trials]
    assert labels[:3] == ["quantize bits=2", "quantize bits=8", "prune sparsity=0.5 pattern=unstructured"]
    assert "sensitivity drop<=1" in labels and (tmp_path / "run" / "sensitivity.json").is_file()
    assert [t.number for t in run.seeded()] and not any(t in run.baselines() for t in run.seeded())
    from tests.support import children

    parent, _ = children(config.tracking.uri)
    from mlflow import MlflowClient

    assert "sensitivity.json" in [a.path for a in MlflowClient(config.tracking.uri).list_artifacts(parent.info.run_id)]

    off = make_config(tmp_path / "off", space=SPACE, budget={"n_trials": 4}, backend={"name": "local"},
                      tracking={"uri": "none"}, sensitivity={"seed": False})
    run_search(off, show_progress=False)
    assert not (tmp_path / "off" / "run" / "sensitivity.json").exists()


def test_the_sensitivity_command_prints_a_table_and_json(tmp_path, capsys):
    """`autocompress sensitivity CONFIG` measures once (a second call reads the cache) and prints a table whose
    column headers are short (W4 g128 A8) or, with --json, the whole measurement."""
    import json

    import yaml

    from autocompress.cli import main

    config = {"model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
              "space": {"quantize": {"bits": [4, None], "group_size": [32, 128], "act_bits": [8, None]}},
              "tracking": {"uri": "none"}, "run_dir": str(tmp_path / "run")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["sensitivity", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "W4 g128 A8" in out and "W4 g32" in out and "measured now" in out
    assert main(["sensitivity", str(path), "--quiet", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(next(iter(data["layers"].values()))) == {
        f"quantize bits=4 group_size={g} act_bits={a}" for g in (32, 128) for a in (8, None)}


def test_a_seeded_search_reports_the_measurement_as_it_goes(tmp_path, monkeypatch):
    """With the progress bar on, the measurement before the first trial reports each plan done to the bar's
    callback (the bar itself draws only on a terminal)."""
    import autocompress.search.seeding.sensitivity as sensitivity
    from autocompress.search.driver import run_search

    seen, real = [], sensitivity.load_or_measure

    def watched(*args, progress=None, **kwargs):
        def report(done, total):
            seen.append((done, total))
            progress(done, total)  # the bar's own callback, which must accept it
        return real(*args, progress=report, **kwargs)

    monkeypatch.setattr(sensitivity, "load_or_measure", watched)
    config = make_config(tmp_path, space=SPACE, budget={"n_trials": 4}, backend={"name": "local"},
                         tracking={"uri": "none"}, sensitivity={"thresholds": [0.0]})
    run_search(config, show_progress=True)
    total = seen[-1][1]
    assert total > 0 and [d for d, _ in seen] == list(range(1, total + 1))


def test_quality_metric_follows_a_next_token_objective(tmp_path):
    from autocompress.search.seeding.sensitivity import quality_metric

    llm = {"model": {"name": "random:llama"}, "tracking": {"uri": "none"}}
    assert quality_metric(make_config(tmp_path, **llm, objectives=["minimize size_mb", "minimize kl"]),
                          "causal-lm") == "kl"
    assert quality_metric(make_config(tmp_path, **llm, objectives=["maximize top1_agreement", "minimize size_mb"]),
                          "causal-lm") == "top1_agreement"
    assert quality_metric(make_config(tmp_path, **llm, objectives=["minimize size_mb"]), "causal-lm") == "perplexity"
