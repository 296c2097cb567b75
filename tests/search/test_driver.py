"""The search end to end on a tiny model: both backends, resume, constraints, failures, MLflow (SQLite and a
real server), the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from autocompress.cli import main
from autocompress.search.driver import run_search
from autocompress.search.rundir.reader import RunDir
from autocompress.search.study import counted_trials
from tests.support import SPACE, children, make_config, stored_trials


def test_local_search_end_to_end(tmp_path):
    config = make_config(tmp_path)
    result = run_search(config, show_progress=False)
    trials = stored_trials(config)
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    baselines = [t.user_attrs.get("baseline") for t in trials[:4]]  # a fresh study starts from them
    assert baselines == ["quantize bits=2", "quantize bits=4", "quantize bits=8", "structured sparsity=0.5"]
    assert result.counts == {"COMPLETE": 6} and result.pareto and result.picked is not None
    for p in result.pareto:
        assert Path(p.plan_path).is_file() and set(p.values) == {"fidelity", "size_mb"}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["study_name"] == "tiny" and summary["counts"] == {"COMPLETE": 6}
    parent, kids = children(config.tracking.uri)
    assert parent.info.status == "FINISHED" and len(kids) == 6
    kid = kids[0]
    assert "fidelity" in kid.data.metrics and kid.data.tags["autocompress.state"] == "COMPLETE"
    assert any(k.endswith(".bits") for k in kid.data.params)  # the plan, flattened


def test_resume_continues_without_rerunning(tmp_path):
    first = make_config(tmp_path, budget={"n_trials": 4})
    run_search(first, show_progress=False)
    before = {t.number: (t.values, t.datetime_complete) for t in stored_trials(first)}
    second = make_config(tmp_path, budget={"n_trials": 7})
    result = run_search(second, show_progress=False)
    trials = stored_trials(second)
    assert [t.number for t in trials] == list(range(7)) and result.counts == {"COMPLETE": 7}
    for t in trials[:4]:
        assert (t.values, t.datetime_complete) == before[t.number]  # finished trials never run again
    _, kids = children(second.tracking.uri)
    assert sorted(int(k.data.tags["autocompress.trial_number"]) for k in kids) == list(range(7))
    # a third run with the budget already spent does no trial work at all
    assert run_search(second, show_progress=False).counts == {"COMPLETE": 7}


def test_constraints_keep_infeasible_plans_off_the_pareto_front(tmp_path):
    config = make_config(tmp_path, budget={"n_trials": 12}, sampler={"name": "random", "seed": 3},
                         constraints=["fidelity >= 0.9999", "size_mb <= 8.0"])
    result = run_search(config, show_progress=False)
    trials = stored_trials(config)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    infeasible = [t for t in trials if t.state.name == "COMPLETE" and any(v > 0 for v in t.constraints.values())]
    assert pruned, "some plans should break the size budget before any model work"
    assert all("breaks size_mb <= 8" in t.user_attrs["reason"] for t in pruned)
    assert all("fidelity" not in t.user_attrs["metrics"] for t in pruned)  # no model work was done
    assert infeasible, "some evaluated plans should miss the fidelity constraint"
    front = {p.number for p in result.pareto}
    assert front and not front & {t.number for t in infeasible + pruned}
    for p in result.pareto:
        assert p.metrics["fidelity"] >= 0.9999 and p.metrics["size_mb"] <= 8.0


def test_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    import autocompress.policies as policies

    real = policies.apply_plan
    calls = {"n": 0}

    def flaky(model, plan, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected failure")
        return real(model, plan, *args, **kwargs)

    monkeypatch.setattr(policies, "apply_plan", flaky)
    config = make_config(tmp_path, budget={"n_trials": 5})
    result = run_search(config, show_progress=False)
    failed = [t for t in stored_trials(config) if t.state.name == "FAIL"]
    assert len(failed) == 1 and "injected failure" in failed[0].user_attrs["error"]
    assert result.counts.get("FAIL") == 1 and sum(result.counts.values()) == 5
    _, kids = children(config.tracking.uri)
    bad = [k for k in kids if k.data.tags["autocompress.state"] == "FAIL"]
    assert len(bad) == 1 and bad[0].info.status == "FAILED" and "injected" in bad[0].data.tags["autocompress.error"]


def test_ray_backend_uses_two_workers(tmp_path):
    config = make_config(tmp_path, budget={"n_trials": 6}, backend={"name": "ray", "workers": 2})
    result = run_search(config, show_progress=False)
    trials = stored_trials(config)
    assert result.counts == {"COMPLETE": 6}
    workers = {t.user_attrs["worker"] for t in trials if t.user_attrs["worker"] != "cache"}
    assert len(workers) == 2, f"trials should spread over both actors, saw {workers}"
    _, kids = children(config.tracking.uri)
    assert len(kids) == 6


def test_search_logs_to_a_real_mlflow_server(tmp_path, mlflow_server):
    config = make_config(tmp_path, budget={"n_trials": 3}, tracking={"uri": mlflow_server})
    result = run_search(config, show_progress=False)
    parent, kids = children(mlflow_server)
    assert parent.info.status == "FINISHED" and len(kids) == 3
    assert result.ui_hint.startswith(mlflow_server)
    client = MlflowClient(tracking_uri=mlflow_server)
    assert "pareto.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_cli_search_json_and_bad_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": {"name": "random:bert"}, "space": SPACE,
                                "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
                                "tracking": {"uri": "none"}}))
    assert main(["search", str(path), "--trials", "3", "--run-dir", str(tmp_path / "r"), "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"] == {"COMPLETE": 3} and out["storage"].endswith("r/optuna.db") and out["pareto"]
    path.write_text("model: {name: 'random:bert'}\nspace: {quantize: {bitz: [4]}}\n")
    assert main(["search", str(path)]) == 2
    assert "did you mean 'bits'" in capsys.readouterr().err


def test_metric_the_task_cannot_produce_is_refused_before_trials(tmp_path):
    from autocompress.errors import UserError

    config = make_config(tmp_path, objectives=["minimize perplexity"])
    with pytest.raises(UserError, match="perplexity"):
        run_search(config, show_progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written: no study, no run dir


def test_ui_refuses_a_run_without_tracking(tmp_path, capsys):
    config = make_config(tmp_path, budget={"n_trials": 1}, tracking={"uri": "none"})
    run_search(config, show_progress=False)
    assert main(["ui", str(tmp_path / "run")]) == 2
    assert "tracking.uri: none" in capsys.readouterr().err
    assert main(["ui", str(tmp_path)]) == 2  # not a run directory


def test_nan_metric_fails_the_trial(tmp_path, monkeypatch):
    from autocompress.evaluators.fidelity import FidelityEvaluator

    real = FidelityEvaluator.evaluate
    calls = {"n": 0}

    def sometimes_nan(self, model):
        calls["n"] += 1
        metrics = real(self, model)
        return {**metrics, "fidelity": float("nan")} if calls["n"] == 1 else metrics

    monkeypatch.setattr(FidelityEvaluator, "evaluate", sometimes_nan)
    config = make_config(tmp_path, budget={"n_trials": 3})
    result = run_search(config, show_progress=False)
    failed = [t for t in stored_trials(config) if t.state.name == "FAIL"]
    assert len(failed) == 1 and "non-finite metric fidelity" in failed[0].user_attrs["error"]
    assert result.counts == {"COMPLETE": 2, "FAIL": 1}


PROFILE = """
name: test-cpu
kind: cpu
description: a made-up CPU for tests
sources: [test]
dtype: fp32
peak_tflops: {fp32: 0.05, int8: 0.2}
bandwidth_gbs: 10
cache_mb: 8
overhead_us: 5
kernels:
  w8a8: {fast: true, compute: int8}
"""


def test_latency_target_is_an_objective_decided_before_model_work(tmp_path):
    (tmp_path / "cpu.yaml").write_text(PROFILE)
    space = {"quantize": {"bits": [4, 8, None], "act_bits": [8, None]}, "structured": {"sparsity": [0.0, 0.5]}}
    dense = make_config(tmp_path, budget={"n_trials": 1}, space=space, sampler={"enqueue_uniform": False},
                        target={"profile": str(tmp_path / "cpu.yaml"), "latency_model": "roofline"})
    from autocompress.evaluators.latency import LATENCY_MODELS, Workload
    from autocompress.hardware import load_profile
    from autocompress.loading import load_model
    from autocompress.plan import CompressionPlan

    info = load_model("random:bert").info
    dense_ms = LATENCY_MODELS.get("roofline")(load_profile(str(tmp_path / "cpu.yaml"))).predict(
        CompressionPlan({}), info, Workload()).total_ms
    config = make_config(tmp_path, budget={"n_trials": 12}, space=space, sampler={"name": "random", "seed": 1},
                         target={"profile": str(tmp_path / "cpu.yaml"), "latency_model": "roofline"},
                         objectives=["maximize fidelity", "minimize latency_ms"],
                         constraints=[f"latency_ms <= {dense_ms * 0.8:.6f}"])
    assert dense.target.model_name == "roofline"
    result = run_search(config, show_progress=False)
    trials = stored_trials(config)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert pruned and done
    assert all("latency_ms" in t.user_attrs["metrics"] and "fidelity" not in t.user_attrs["metrics"] for t in pruned)
    assert all(t.user_attrs["metrics"]["latency_ms"] <= dense_ms * 0.8 for t in done)
    assert all(set(p.values) == {"fidelity", "latency_ms"} for p in result.pareto)
    # with a target, memory_mb is decided by the plan too (an encoder: the packed weights alone) and logged
    assert all(t.user_attrs["metrics"]["memory_mb"] == pytest.approx(t.user_attrs["metrics"]["size_mb"])
               for t in trials)
    _, kids = children(config.tracking.uri)
    assert kids and all("memory_mb" in k.data.metrics for k in kids)


def test_best_values_are_the_extremes_of_optunas_feasible_pareto_set():
    """The progress bar's best-so-far, from one read of the trials, equals what `study.best_trials` gives."""
    from autocompress.search.pareto import best_values

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(40):
        trial = study.ask()
        fidelity, size = trial.suggest_float("f", 0.8, 1.0), trial.suggest_float("s", 1.0, 50.0)
        trial.set_constraint("fidelity >= 0.9", 0.9 - fidelity)
        if i % 7 == 3:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, [fidelity, size])
    objectives = [("maximize", "fidelity"), ("minimize", "size_mb")]
    front = study.best_trials
    expected = {"fidelity": max(t.values[0] for t in front), "size_mb": min(t.values[1] for t in front)}
    assert best_values(study.get_trials(deepcopy=False), objectives) == expected
    assert expected["fidelity"] > 0.9 and all(t.values[0] >= 0.9 for t in front)


def test_repeated_plans_do_not_use_up_the_budget(tmp_path):
    """A plan an earlier trial evaluated reuses its metrics and does not count toward n_trials, up to n_trials
    such repeats. A space of 2 plans, both evaluated by a first run; resumed with n_trials 4, every new trial
    is a repeat: 4 free ones, then 2 that count, and the search ends."""
    space = {"share": "layer", "quantize": {"bits": [4, 8], "targets": ["re:layer\\.0\\.attention\\.self\\.query$"]}}
    config = make_config(tmp_path, space=space, budget={"n_trials": 2}, sampler={"name": "random", "seed": 3},
                         tracking={"uri": "none"})
    first = run_search(config, show_progress=False)
    assert first.repeats == 0 and len(stored_trials(config)) == 2  # the two uniform baselines
    config = config.model_copy(update={"budget": config.budget.model_copy(update={"n_trials": 4})})
    result = run_search(config, show_progress=False)
    trials = stored_trials(config)
    assert [t.user_attrs["worker"] == "cache" for t in trials] == [False] * 2 + [True] * 6
    assert result.repeats == 6 and counted_trials(trials, 4) == 4
    assert all(t.state.name == "COMPLETE" for t in trials)
    front = optuna.load_study(study_name=config.study_name, storage=config.storage).best_trials
    assert len(front) > len(result.pareto) == 1  # Optuna's front holds the repeats too; the summary each plan once
    assert {p.number for p in result.pareto} == {t.number for t in front} - set(range(2, 8))
    assert RunDir.open(config.run_dir).front_numbers() == [p.number for p in result.pareto]  # report, export


def test_counted_trials():
    study = optuna.create_study(directions=["maximize"])
    for worker in ["h:1", "h:1", "cache", "h:1", "cache"]:
        study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"worker": worker}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"worker": "h:1"}))
    trials = study.get_trials()
    assert counted_trials(trials, 10) == 4  # 3 evaluated + 1 failed; the 2 repeats are free
    assert counted_trials(trials, 1) == 5  # only 1 repeat is free when the budget is 1
    assert counted_trials(trials, None) == 6


def test_a_search_over_codebooks_minimizing_the_coded_size(tmp_path):
    config = make_config(tmp_path, space={"quantize": {"bits": [3, 4, None], "method": ["rtn", "kmeans"]}},
                         objectives=["maximize fidelity", "minimize size_coded_mb"], tracking={"uri": "none"},
                         budget={"n_trials": 5})
    result = run_search(config, show_progress=False)
    trials = stored_trials(config)
    assert result.counts == {"COMPLETE": 5}
    for t in trials:
        metrics = t.user_attrs["metrics"]
        assert 0 < metrics["size_coded_mb"] < metrics["size_mb"]  # the fp32 tables' byte planes shrink too
        assert t.values[1] == metrics["size_coded_mb"]
    assert any(v == "kmeans" for t in trials for k, v in t.params.items() if k.endswith(".quant_method"))
