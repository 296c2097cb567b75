"""Distillation in the search space and early stopping with Optuna's pruners (search/early_stopping.py), on tiny
random models: pruning stops trials on both backends and says why in Optuna and MLflow, the companion study
mirrors the main one, the worker stops distillation at the pruned step, and without a pruner nothing changes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.plan import CompressionPlan
from autocompress.search.driver import run_search
from autocompress.objectives import quality_metric
from autocompress.search.early_stopping import SUFFIX, WorkerPruning, make_pruner, subset_size
from autocompress.search.workers.runner import TrialRunner
from tests.support import children, stored_trials

SPACE = {"quantize": {"bits": [2, 4, 8], "group_size": [16]},
         "distill": {"steps": [0, 4], "lr": 1e-3, "beta": [0.0, 1.0], "layers": "all", "batch_size": 4,
                     "max_length": 32, "eval_every": 2}}
PRUNER = {"name": "median", "n_startup_trials": 2}


def make_config(tmp_path: Path, **extra) -> SearchConfig:
    data = {"model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 32}},
            "space": SPACE, "budget": {"n_trials": 7}, "sampler": {"name": "random", "seed": 0},
            "pruner": PRUNER, "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
            "run_dir": str(tmp_path / "run"), "study_name": "tiny"}
    data.update(extra)
    return SearchConfig.from_dict(data).resolved(tmp_path)


def companion(config: SearchConfig) -> dict[int, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=config.study_name + SUFFIX, storage=config.storage)
    return {t.number: t for t in study.get_trials()}


def check_pruned_search(config: SearchConfig) -> None:
    """Trials were pruned, with the reason in Optuna and MLflow, and the companion study matches."""
    run_search(config, show_progress=False)
    trials = stored_trials(config)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and any(t.state.name == "COMPLETE" for t in trials)
    for t in pruned:
        assert t.user_attrs["reason"].startswith("pruned by median at step 0 (fidelity 0.")
        assert "fidelity" in t.user_attrs["metrics"]  # the last intermediate metrics
    partner = companion(config)
    assert len(partner) == len(trials)  # every trial reached a worker (none broke a size constraint)
    for t in trials:
        c = partner[t.user_attrs["pruning_trial"]]
        assert c.user_attrs["trial"] == t.number and c.state == t.state
        assert 0 in c.intermediate_values  # step 0: the quality on the subset, right after applying
        if t.state.name == "COMPLETE":
            assert c.value == pytest.approx(t.user_attrs["metrics"]["fidelity"])
            steps = t.params.get("distill.steps", 0)
            assert sorted(c.intermediate_values) == list(range(0, steps + 1, 2))
    _, kids = children(config.tracking.uri)
    logged = {k.data.tags["autocompress.trial_number"]: k.data.tags for k in kids}
    for t in pruned:
        tags = logged[str(t.number)]
        assert tags["autocompress.state"] == "PRUNED" and tags["autocompress.error"] == t.user_attrs["reason"]


@pytest.mark.parametrize("budget", [{"n_trials": 7}, {"n_trials": 7, "trial_timeout_s": 300}],
                         ids=["in-process", "child-process"])
def test_local_search_prunes_trials_and_says_why(tmp_path, budget):
    check_pruned_search(make_config(tmp_path, budget=budget))


def test_ray_search_prunes_trials_and_says_why(tmp_path):
    check_pruned_search(make_config(tmp_path, backend={"name": "ray", "workers": 2}))


def test_without_a_pruner_nothing_changes_and_distilled_plans_run(tmp_path):
    config = make_config(tmp_path, pruner={"name": "none"}, budget={"n_trials": 6}, tracking={"uri": "none"})
    assert TrialRunner(config).subset_evaluator is None
    run_search(config, show_progress=False)
    trials = stored_trials(config)
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert all("pruning_trial" not in t.user_attrs for t in trials)
    assert config.study_name + SUFFIX not in optuna.get_all_study_names(config.storage)  # no companion study
    assert [t.params["distill.steps"] for t in trials[:3]] == [0, 0, 0]  # the uniform baselines
    distilled = [t for t in trials if t.params["distill.steps"] == 4]
    assert distilled, "the random sampler should draw a distilled plan in 3 draws with this seed"
    plan = CompressionPlan.load(distilled[0].user_attrs["plan_path"])
    assert plan.distill is not None and plan.distill.steps == 4 and plan.distill.eval_every == 2


def test_export_of_a_distilled_trial_matches_what_was_evaluated(tmp_path):
    from autocompress.export.from_run import export

    space = {**SPACE, "distill": {**SPACE["distill"], "steps": 4}}
    config = make_config(tmp_path, space=space, pruner={"name": "none"}, budget={"n_trials": 1},
                         tracking={"uri": "none"})
    run_search(config, show_progress=False)
    (trial,) = stored_trials(config)
    assert CompressionPlan.load(trial.user_attrs["plan_path"]).distill.steps == 4
    result = export(config.run_dir, tmp_path / "out", trial=trial.number, log=False)
    assert result.max_metric_diff < 1e-4, (result.searched, result.measured)


def test_worker_stops_distillation_at_the_pruned_step(tmp_path):
    """Completed companion trials that reached 1.0 at every step make a mediocre trial's step 2 lose."""
    config = make_config(tmp_path, pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1})
    (tmp_path / "run").mkdir()
    study = optuna.create_study(study_name=config.study_name + SUFFIX, storage=config.storage, direction="maximize")
    for _ in range(2):
        t = study.ask()
        for step in (0, 2, 4):
            t.report(1.0, step)
        study.tell(t, 1.0)
    number = study.ask().number
    runner = TrialRunner(config)
    plan = CompressionPlan.from_dict({"version": 1, "layers": {n: {"bits": 2, "group_size": 16}
                                                               for n in runner.info.layers},
                                      "distill": {"steps": 4, "eval_every": 2, "batch_size": 4, "max_length": 32}})
    outcome = runner.run(plan.to_json(), number=0, pruning=number)
    assert outcome.error is None and outcome.pruned.startswith("at step 2 (fidelity ")  # step 0 is warm-up
    assert set(outcome.metrics) >= {"fidelity", "loss", "kd", "hidden"} and outcome.eval_s == 0.0
    frozen = study.get_trials()[number]
    assert sorted(frozen.intermediate_values) == [0, 2]  # stopped before step 4


def test_worker_that_cannot_open_the_storage_runs_unpruned(tmp_path):
    config = make_config(tmp_path, storage="sqlite:////proc/no-such-dir/optuna.db")
    runner = TrialRunner(config)
    plan = CompressionPlan.from_dict({"version": 1, "layers": {n: {"bits": 8, "group_size": 16}
                                                               for n in runner.info.layers}})
    with pytest.warns(UserWarning, match="runs without pruning|run without pruning"):
        first = runner.run(plan.to_json(), number=0, pruning=0)
    second = runner.run(plan.to_json(), number=1, pruning=1)  # warned once: no second warning
    for outcome in (first, second):
        assert outcome.error is None and outcome.pruned is None and outcome.metrics["fidelity"] > 0.99


def test_pruner_helpers():
    config = make_config(Path("/tmp"), objectives=["minimize size_mb", "maximize topk_agreement"],
                         pruner={"name": "percentile", "percentile": 40.0, "n_warmup_steps": 2})
    assert quality_metric(config, "embedding") == ("topk_agreement", "maximize")
    assert quality_metric(config, "causal-lm") == ("perplexity", "minimize")
    pruner = make_pruner(config)
    assert isinstance(pruner, optuna.pruners.PercentilePruner) and pruner._percentile == 40.0
    assert pruner._n_warmup_steps == 2
    assert (subset_size(128, 0.25), subset_size(16, 0.25), subset_size(4, 0.25)) == (32, 8, 4)
    assert WorkerPruning(config, "embedding").trial(None) is None


@pytest.mark.parametrize("pruner, words", [
    ({"name": "medain"}, "pruner.name"),
    ({"name": "median", "reduction_factor": 3}, "reduction_factor is not an argument of the median pruner"),
    ({"name": "percentile"}, "needs percentile"),
    ({"name": "percentile", "percentile": 120}, "pruner.percentile"),
    ({"name": "hyperband", "min_resource": "auto"}, "give hyperband an integer"),
    ({"name": "successive_halving", "min_resource": 0}, "min_resource must be"),
    ({"name": "median", "metric": "size_mb"}, "decided by the plan"),
    ({"name": "median", "metric": "fidelty"}, "did you mean 'fidelity'"),
    ({"name": "median", "subset": 0}, "pruner.subset"),
    ({"name": "median", "patience": 3}, "patience")])
def test_pruner_config_errors_name_the_key(pruner, words):
    with pytest.raises(UserError, match="pruner") as err:
        SearchConfig.from_dict({"model": {"name": "x"}, "space": {"quantize": {}}, "pruner": pruner})
    assert words in str(err.value)


def test_pruner_metric_the_task_does_not_measure_is_refused():
    config = SearchConfig.from_dict({"model": {"name": "x"}, "space": {"quantize": {}},
                                     "pruner": {"name": "median", "metric": "perplexity"}})
    with pytest.raises(UserError, match="pruner.metric 'perplexity' is not measured"):
        config.check_task("embedding")


def test_threshold_pruner_stops_at_the_constraint_bound():
    config = make_config(Path("/tmp"), constraints=["fidelity >= 0.93"],
                         pruner={"name": "threshold", "n_warmup_steps": 2})
    config.check_task("embedding")
    pruner = make_pruner(config, "embedding")
    assert isinstance(pruner, optuna.pruners.ThresholdPruner)
    assert (pruner._lower, pruner._upper, pruner._n_warmup_steps) == (0.93, float("inf"), 2)
    explicit = make_config(Path("/tmp"), pruner={"name": "threshold", "upper": 3.0, "metric": "perplexity"})
    assert make_pruner(explicit, "causal-lm")._upper == 3.0
    unbounded = make_config(Path("/tmp"), pruner={"name": "threshold"})
    with pytest.raises(UserError, match="pruner threshold has no bound: add a constraint on fidelity"):
        unbounded.check_task("embedding")


def test_local_search_with_the_threshold_pruner(tmp_path):
    """Trials whose subset fidelity is under the constraint's bound end PRUNED with that value as the reason;
    every completed trial was at or above it at every reported step."""
    config = make_config(tmp_path, constraints=["fidelity >= 0.9995"], pruner={"name": "threshold"},
                         tracking={"uri": "none"})
    run_search(config, show_progress=False)
    trials = stored_trials(config)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, [t.user_attrs.get("metrics") for t in trials]
    partner = companion(config)
    for t in pruned:
        assert t.user_attrs["reason"].startswith("pruned by threshold at step ")
        reported = partner[t.user_attrs["pruning_trial"]].intermediate_values
        assert reported[max(reported)] < 0.9995  # the value at the step that stopped it (the reason rounds it)
    for t in trials:
        if t.state.name == "COMPLETE":
            assert min(partner[t.user_attrs["pruning_trial"]].intermediate_values.values()) >= 0.9995


def test_companion_of_a_dead_drivers_trial_ends_fail_with_it(tmp_path):
    """A driver killed mid-trial leaves its trial and the trial's companion RUNNING; the next run fails both
    (the trial through liveness.py, its companion here) and runs the params again."""
    import socket
    import subprocess

    from autocompress.search.early_stopping import PruningStudy

    config = make_config(tmp_path, budget={"n_trials": 2}, tracking={"uri": "none"})
    Path(config.run_dir).mkdir(parents=True)
    study = optuna.create_study(storage=config.storage, study_name=config.study_name,
                                directions=["maximize", "minimize"])
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names no process now
    orphan = study.ask({"distill.steps": optuna.distributions.CategoricalDistribution([0, 4])})
    orphan.set_user_attr("driver", f"{socket.gethostname()}:{dead.pid}:1")
    number = PruningStudy(config, study, "embedding").ask(orphan.number)
    orphan.set_user_attr("pruning_trial", number)
    assert companion(config)[number].state.name == "RUNNING"
    run_search(config, show_progress=False)
    assert stored_trials(config)[0].state.name == "FAIL"
    assert companion(config)[number].state.name == "FAIL"
    assert not [t for t in companion(config).values() if t.state.name == "RUNNING"]
