import pytest
import yaml

from autocompress.cli import main
from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.search.auto import auto_config, write_auto_config


@pytest.mark.parametrize("task, objective, constraint", [
    ("embedding", "maximize fidelity", "fidelity >= 0.98"),
    ("causal-lm", "minimize perplexity_ratio", "perplexity_ratio <= 1.02"),
])
def test_auto_config_is_a_valid_complete_config(tmp_path, task, objective, constraint):
    data = auto_config("random:bert", task, 0.02, 40, str(tmp_path / "run"))
    path = write_auto_config(data, str(tmp_path / "run"))
    config = SearchConfig.from_yaml(path)
    assert config.objectives == [objective, "minimize size_mb"] and config.constraints == [constraint]
    assert config.pick == f"minimize size_mb where {constraint}" and config.budget.n_trials == 40
    assert config.space.quantize and config.space.structured and config.space.share == "group"
    assert config.space.quantize.bits == [3, 4, 5, 6, 8, None]
    assert config.space.embeddings.bits == [8, 6, 5, 4, None]  # one decision per table
    assert open(path).read().startswith("# Written by `autocompress auto`")


def test_auto_refuses_what_it_cannot_do():
    with pytest.raises(UserError, match="max-drop"):
        auto_config("m", "embedding", 1.5, 10, "r")
    with pytest.raises(UserError, match="sequence-classification"):
        auto_config("m", "sequence-classification", 0.01, 10, "r")


def test_auto_runs_and_the_written_config_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["auto", "random:bert", "--trials", "3", "--backend", "local", "--quiet", "--json"]) == 0
    out = capsys.readouterr()
    assert "runs/auto-random-bert/auto.yaml" in out.err
    path = tmp_path / "runs" / "auto-random-bert" / "auto.yaml"
    assert yaml.safe_load(path.read_text())["model"]["name"] == "random:bert"
    assert main(["search", str(path), "--trials", "4", "--quiet", "--json"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert sum(summary["counts"].values()) == 4  # the same study, continued


def test_auto_with_a_target_optimizes_latency(tmp_path):
    data = auto_config("random:bert", "embedding", 0.01, 20, str(tmp_path / "run"), target="h100-sxm")
    config = SearchConfig.from_yaml(write_auto_config(data, str(tmp_path / "run")))
    assert config.objectives == ["maximize fidelity", "minimize latency_ms"]
    assert config.target.profile == "h100-sxm" and config.target.model_name == "roofline"
    assert config.space.quantize.act_bits == [8, None] and config.pick.startswith("minimize latency_ms")


def test_auto_seed_sensitivity_seeds_the_study_from_measured_plans(tmp_path, monkeypatch):
    import optuna

    assert "sensitivity" not in auto_config("random:bert", "embedding", 0.01, 20, str(tmp_path / "r"))
    monkeypatch.chdir(tmp_path)
    assert main(["auto", "random:bert", "--trials", "10", "--backend", "local", "--quiet", "--seed-sensitivity"]) == 0
    path = tmp_path / "runs" / "auto-random-bert" / "auto.yaml"
    assert SearchConfig.from_yaml(path).sensitivity is not None
    run = tmp_path / "runs" / "auto-random-bert"
    assert (run / "sensitivity.json").is_file()
    study = optuna.load_study(study_name="auto-random-bert", storage=f"sqlite:///{run / 'optuna.db'}")
    labels = [t.user_attrs.get("baseline", "") for t in study.trials if t.state.is_finished()]
    assert len(labels) == 10 and labels[0].startswith("quantize")  # the uniform plans first (7 here)
    assert any(label.startswith("sensitivity") for label in labels)  # then the seeds


def test_auto_unknown_target_exits_2(capsys):
    assert main(["auto", "random:bert", "--target", "nope", "--quiet"]) == 2
    assert "shipped profiles" in capsys.readouterr().err
