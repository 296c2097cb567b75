import json
import os

import pytest
import yaml

from autocompress.cli import main
from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.search.auto import auto_config, write_auto_config


@pytest.mark.parametrize("task, objective, constraint", [
    ("embedding", "maximize fidelity", "fidelity >= 0.98"),
    ("causal-lm", "minimize kl", "perplexity_ratio <= 1.02"),
])
def test_auto_config_is_a_valid_complete_config(tmp_path, task, objective, constraint):
    data = auto_config("random:bert", task, 0.02, 40, str(tmp_path / "run"))
    path = write_auto_config(data, str(tmp_path / "run"))
    config = SearchConfig.from_yaml(path)
    assert config.objectives == [objective, "minimize size_mb"] and config.constraints == [constraint]
    assert config.pick == f"minimize size_mb where {constraint}" and config.budget.n_trials == 40
    assert config.space.quantize and config.space.structured and config.space.share == "group"
    assert config.space.quantize.bits == [8, 6, 5, 4, 3, None]  # mildest first: the baselines' order
    assert config.space.embeddings.bits == [8, 6, 5, 4, None]  # one decision per table
    assert open(path).read().startswith("# Written by `autocompress auto`")


def test_auto_config_for_a_causal_lm_reads_prose_and_prices_decode(tmp_path):
    """A causal LM: KL against the original as the objective, the perplexity ratio as the limit and in the pick,
    python-docs passages cut at 256 tokens, one-pass GPTQ, and a target priced as one decode step."""
    from autocompress.search.auto import LM_EVAL_TEXTS, LM_MAX_LENGTH

    data = auto_config("random:llama-tied", "causal-lm", 0.05, 10, str(tmp_path / "run"), target="cpu-local")
    config = SearchConfig.from_yaml(write_auto_config(data, str(tmp_path / "run")))
    assert config.objectives == ["minimize kl", "minimize latency_ms"]
    assert config.constraints == ["perplexity_ratio <= 1.05"]
    assert config.pick == "minimize latency_ms where perplexity_ratio <= 1.05"
    d = config.data
    assert (d.evaluation.source, d.evaluation.n, d.max_length) == ("python-docs", LM_EVAL_TEXTS, LM_MAX_LENGTH)
    assert d.calibration.source == "python-docs" and d.calibration.sequential is False
    assert d.evaluation.seed != d.calibration.seed
    t = config.target
    assert (t.profile, t.mode, t.seq_len, t.batch) == ("cpu-local", "decode", LM_MAX_LENGTH, 1)
    encoder = auto_config("random:bert", "embedding", 0.01, 10, "r", target="cpu-local")  # encoders: unchanged
    assert encoder["target"] == {"profile": "cpu-local"} and encoder["data"]["evaluation"]["source"] == "builtin"
    assert "max_length" not in encoder["data"] and "sequential" not in encoder["data"]["calibration"]


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

    summary = json.loads(capsys.readouterr().out)
    assert sum(summary["counts"].values()) == 4  # the same study, continued


def test_auto_with_a_target_optimizes_latency(tmp_path):
    data = auto_config("random:bert", "embedding", 0.01, 20, str(tmp_path / "run"), target="h100-sxm")
    config = SearchConfig.from_yaml(write_auto_config(data, str(tmp_path / "run")))
    assert config.objectives == ["maximize fidelity", "minimize latency_ms"]
    assert config.target.profile == "h100-sxm" and config.target.model_name == "roofline"
    assert config.space.quantize.act_bits == [None, 8] and config.pick.startswith("minimize latency_ms")


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


def test_auto_run_dir_that_is_a_file_exits_2_before_writing(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    assert main(["auto", "random:bert", "--run-dir", str(taken), "--backend", "local", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --run-dir '{taken}' is a file, not a directory; name a directory (created if missing) " \
                  "or move it away"
    assert taken.read_text() == "keep me" and os.listdir(tmp_path) == ["taken"]


@pytest.mark.parametrize("spec", ["random:llama-tied", "random:gpt2", "random:bert"])
def test_auto_config_fits_the_model(tmp_path, spec):
    """Every section auto writes builds a space on the model, every baseline is a valid plan, the mildest
    baselines come first, and a table tied to the LM head is in the space (its bits on the head)."""
    from autocompress.evaluators.size import plan_size
    from autocompress.loading import meta_inventory
    from autocompress.spaces import ConfigSpace
    from autocompress.validation import validate_plan

    info = meta_inventory(spec)
    data = auto_config(spec, info.task, 0.01, 2, str(tmp_path / "run"), info=info)
    config = SearchConfig.from_yaml(write_auto_config(data, str(tmp_path / "run")))
    space = ConfigSpace(config.space, info)
    assert set(space.technique_units["embeddings"]) == set(info.embeddings)  # tied tables included
    tied = {t: e.tied_to for t, e in info.embeddings.items() if e.tied_to}
    for table, linear in tied.items():
        assert space.technique_units["embeddings"][table] == (linear,)
    params, plans = space.uniform_params(), space.uniform_plans()
    assert list(params)[:2] == ["quantize bits=8", "quantize bits=6"]  # what a 2-trial budget runs
    for label, plan in plans.items():
        validate_plan(plan, info)
        assert space.plan_from_params(params[label]) == plan
    four = plans["quantize bits=4"]
    assert all(four.layers[linear].bits == 4 for linear in tied.values())
    if tied:  # the shared weight counted once, at 4 bits: 4/32 of its float32 bytes plus scales
        head = info.layers["lm_head"]
        assert plan_size(four, info).per_layer["lm_head"] < head.params * 4 * 0.2
    assert all(s.kv_groups == 1 for s in map(info.structures.get, space.technique_units.get("structured", {})))


def test_auto_leaves_out_what_the_model_cannot_take(tmp_path):
    import dataclasses

    from autocompress.loading import meta_inventory

    info = meta_inventory("random:llama-tied")  # grouped-query heads: only the FFN neurons are prunable
    bare = dataclasses.replace(info, embeddings={},
                               structures={n: s for n, s in info.structures.items() if s.kind == "heads"})
    data = auto_config("random:llama-tied", "causal-lm", 0.01, 2, str(tmp_path / "r"), info=bare)
    assert set(data["space"]) == {"share", "quantize"}
    assert {"embeddings", "structured"} <= set(auto_config("m", "causal-lm", 0.01, 2, "r")["space"])  # no info


@pytest.mark.parametrize("spec", ["random:llama-tied", "random:gpt2"])
def test_auto_with_two_trials_ends_with_a_feasible_pick(tmp_path, monkeypatch, spec):
    """A budget of two trials runs the two mildest uniform baselines (8 and 6 bits, tied head included),
    which meet the default --max-drop (perplexity within 1%) on these models. Few texts keep it fast."""
    import optuna

    from autocompress.loading import meta_inventory
    from autocompress.search.driver import run_search

    monkeypatch.chdir(tmp_path)  # MLflow's default store is in the working directory
    info = meta_inventory(spec)
    run = str(tmp_path / "run")
    data = auto_config(spec, info.task, 0.01, 2, run, backend="local", info=info)
    data["data"]["evaluation"]["n"] = 4
    config = SearchConfig.from_yaml(write_auto_config(data, run))
    result = run_search(config, show_progress=False)
    assert result.picked is not None and result.picked.metrics["perplexity_ratio"] <= 1.01
    study = optuna.load_study(study_name=config.study_name, storage=config.storage)
    labels = [t.user_attrs.get("baseline") for t in study.trials]
    assert labels == ["quantize bits=8", "quantize bits=6"]
    tied_plan = json.loads((tmp_path / "run" / "plans" / "trial-0001.json").read_text())
    assert tied_plan["layers"]["lm_head"]["bits"] == 6  # the tied table / head is in the plan


def test_auto_cli_on_a_tied_llama_with_a_target_ends_with_a_pick(tmp_path, monkeypatch, capsys):
    """`autocompress auto random:llama-tied --target cpu-local --trials 2` as written (python-docs texts,
    decode latency): both trials complete, the pick is feasible, and KL / latency are its objectives."""
    monkeypatch.chdir(tmp_path)
    assert main(["auto", "random:llama-tied", "--target", "cpu-local", "--trials", "2", "--backend", "local",
                 "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"].get("COMPLETE") == 2
    picked = summary["picked"]
    assert picked is not None and picked["metrics"]["perplexity_ratio"] <= 1.01
    assert {"kl", "latency_ms"} <= set(picked["values"])
    written = yaml.safe_load((tmp_path / "runs" / "auto-random-llama-tied" / "auto.yaml").read_text())
    assert written["target"]["mode"] == "decode" and written["data"]["evaluation"]["source"] == "python-docs"
    # its config declares 128 positions: texts and context are cut there, not at 256
    assert written["target"]["seq_len"] == written["data"]["max_length"] == 128


def test_auto_fits_group_sizes_to_the_widths(tmp_path):
    """SmolLM2's widths (hidden 576, FFN 1536; built on the meta device, two blocks): 128 does not divide 576,
    so auto offers groups of 64 instead (the int4 kernel needs groups dividing the inputs); MiniLM-like widths
    keep 128."""
    import torch
    import transformers

    from autocompress.models import inspect_model

    def info_of(**shape):
        config = transformers.LlamaConfig(num_hidden_layers=2, vocab_size=49152, tie_word_embeddings=True, **shape)
        with torch.device("meta"):
            return inspect_model(transformers.AutoModelForCausalLM.from_config(config), "causal-lm")

    def below_8_bits(groups):  # a causal LM's 8-bit weights are per channel (the int8 kernels' layout)
        assert groups[8] == [None] and groups[6] == groups[5] == groups[4] == groups.get(3, groups[4])
        return groups[4]

    smol = info_of(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)
    space = auto_config("m", "causal-lm", 0.01, 2, str(tmp_path), info=smol)["space"]
    assert below_8_bits(space["quantize"]["group_size"]) == [32, 64]
    assert below_8_bits(space["embeddings"]["group_size"]) == [32, 64]  # the tied head's 8 bits: the int8 kernel
    assert set(space["embeddings"]["group_size"]) == {8, 6, 5, 4}  # the tables' bits
    wide = info_of(hidden_size=384, intermediate_size=1536, num_attention_heads=6, num_key_value_heads=6)
    space = auto_config("m", "causal-lm", 0.01, 2, str(tmp_path), info=wide)["space"]
    assert below_8_bits(space["quantize"]["group_size"]) == [32, 128]
    assert below_8_bits(space["embeddings"]["group_size"]) == [32, 128]
    no_info = auto_config("m", "causal-lm", 0.01, 2, "r")["space"]["quantize"]["group_size"]
    assert below_8_bits(no_info) == [32, 128]
    encoder = auto_config("m", "embedding", 0.01, 2, "r")["space"]
    assert encoder["quantize"]["group_size"] == encoder["embeddings"]["group_size"] == [32, 128]  # encoders
