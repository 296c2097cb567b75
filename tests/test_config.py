import os

import pytest

from autocompress.config import SearchConfig
from autocompress.errors import UserError

BASE = {"model": {"name": "random:bert"}, "space": {"quantize": {"bits": [4, 8]}}}


def cfg(**extra):
    return SearchConfig.from_dict({**BASE, **extra})


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults(tmp_path):
    c = SearchConfig.from_yaml(write(tmp_path, "model: {name: 'random:bert'}\nspace: {prune: {}}\n"))
    assert c.study_name == "c" and c.run_dir == "runs/c"
    assert c.storage.startswith("sqlite:///") and c.storage.endswith("runs/c/optuna.db")
    assert c.tracking.uri == f"sqlite:///{os.path.abspath('mlflow.db')}"  # the working directory's
    assert c.sampler.name == "nsga2" and c.backend.name == "local"
    assert c.objectives == ["maximize fidelity", "minimize size_mb"]


def test_overrides_merge_before_defaults(tmp_path):
    path = write(tmp_path, "model: {name: 'random:bert'}\nspace: {prune: {}}\nbudget: {n_trials: 50}\n")
    c = SearchConfig.from_yaml(path, {"budget": {"n_trials": 3}, "run_dir": str(tmp_path / "r")})
    assert c.budget.n_trials == 3 and c.storage == f"sqlite:///{tmp_path / 'r' / 'optuna.db'}"


def test_relative_paths_resolve_against_the_config(tmp_path):
    (tmp_path / "texts.txt").write_text("one sentence here\nanother one there\n")
    path = write(tmp_path, "model: {name: 'random:bert'}\nspace: {prune: {}}\n"
                           "data: {evaluation: {source: texts.txt}}\n")
    assert SearchConfig.from_yaml(path).data.evaluation.source == str(tmp_path / "texts.txt")


@pytest.mark.parametrize("extra, message", [
    ({"sapce": {}}, "unknown key 'sapce' (did you mean 'space'?)"),
    ({"space": {"quantize": {"bitz": [4]}}}, "unknown key 'space.quantize.bitz' (did you mean 'bits'?)"),
    ({"space": {}}, "the search space is empty"),
    ({"space": {"quantize": {"bits": [9]}}}, "space.quantize.bits"),
    ({"space": {"prune": {"sparsity": [0.99]}}}, "each sparsity must be within 0..0.95"),
    ({"space": {"prune": {"pattern": ["4to8"]}}}, "pattern '4to8' is unknown"),
    ({"objectives": ["maximize fidelty"]}, "did you mean 'fidelity'"),
    ({"objectives": ["fidelity"]}, "must read 'maximize METRIC'"),
    ({"constraints": ["size_mb =< 3"]}, "must read 'METRIC OP NUMBER'"),
    ({"constraints": ["latency >= 3"]}, "unknown metric 'latency'"),
    ({"budget": {"n_trials": 0}}, "budget.n_trials"),
    ({"budget": {"n_trials": None}}, "a search needs a limit"),
    ({"sampler": {"name": "cmaes"}}, "sampler.name"),
    ({"backend": {"workers": "two"}}, "backend.workers"),
    ({"model": {}}, "missing required key 'model.name'"),
])
def test_bad_configs_name_the_key(extra, message):
    with pytest.raises(UserError, match=None) as info:
        cfg(**extra)
    assert message in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "must be a mapping"),
    ("model: !!python/object/apply:os.system ['true']\n", "safe_load refuses it"),
    ("model: {name: [unclosed\n", "not valid YAML"),
])
def test_bad_yaml(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        SearchConfig.from_yaml(write(tmp_path, text))


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        SearchConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "b.yaml"
    bad.write_bytes(b"\xff\xfe\x00model")
    with pytest.raises(UserError, match="not UTF-8"):
        SearchConfig.from_yaml(bad)


@pytest.mark.parametrize("name", ["../../escaped", "team/a", "a\\b", "..", "x" * 256])
def test_study_name_must_be_a_plain_name_where_it_names_the_run_dir(name):
    with pytest.raises(UserError, match="study_name: .*; (rename|shorten) it, or set run_dir"):
        cfg(study_name=name)
    assert cfg(study_name=name, run_dir="runs/x").study_name == name  # with run_dir it names the study only
    assert cfg(study_name="ok-name_1.v2").study_name == "ok-name_1.v2"


def test_metrics_checked_against_the_task():
    c = cfg(objectives=["minimize perplexity"])
    c.check_task("causal-lm")
    with pytest.raises(UserError, match="'perplexity' is not produced for a model of task 'embedding'"):
        c.check_task("embedding")


def test_next_token_metrics_with_digits_in_their_names_parse():
    c = cfg(objectives=["minimize kl_p99", "maximize top1_agreement", "minimize kl"],
            constraints=["kl_p99 <= 0.5", "top1_agreement>=0.9"], pick="minimize kl where top1_agreement >= 0.95")
    c.check_task("causal-lm")
    with pytest.raises(UserError, match="'kl_p99' is not produced for a model of task 'embedding'"):
        c.check_task("embedding")
    with pytest.raises(UserError, match="unknown metric 'kl_p9'"):
        cfg(objectives=["minimize kl_p9"])


def test_target_profile_must_exist_and_latency_needs_a_target():
    with pytest.raises(UserError, match="device profile 'nope' does not exist; shipped profiles"):
        cfg(target={"profile": "nope"})
    c = cfg(objectives=["maximize fidelity", "minimize latency_ms"])
    with pytest.raises(UserError, match="needs a target"):
        c.check_task("embedding")


def test_calibration_sequential_is_true_false_or_null():
    assert cfg().data.calibration.sequential is None and cfg().data.calibration.n == 64
    assert cfg(data={"calibration": {"sequential": False}}).data.calibration.sequential is False
    with pytest.raises(UserError, match="data.calibration.sequential"):
        cfg(data={"calibration": {"sequential": "sometimes"}})
    with pytest.raises(UserError, match="did you mean 'sequential'"):
        cfg(data={"calibration": {"sequental": True}})
    with pytest.raises(UserError, match="unknown key 'data.evaluation.sequential'"):
        cfg(data={"evaluation": {"sequential": True}})  # a calibration setting only


def test_memory_mb_is_a_plan_metric_that_needs_a_target():
    for where, task in (({"objectives": ["minimize perplexity", "minimize memory_mb"]}, "causal-lm"),
                        ({"constraints": ["memory_mb <= 100"]}, "embedding")):  # an encoder: the weights alone
        with pytest.raises(UserError, match="'memory_mb' needs a target.*seq_len"):
            cfg(**where).check_task(task)
        cfg(**where, target={"profile": "cpu-local", "seq_len": 2048}).check_task(task)
    with pytest.raises(UserError, match="decided by the plan"):
        cfg(pruner={"name": "median", "metric": "memory_mb"})


def test_size_coded_mb_is_a_metric_of_every_task_but_not_a_pruner_metric():
    for task in ("embedding", "causal-lm", "sequence-classification"):
        cfg(objectives=["minimize size_coded_mb"], constraints=["size_coded_mb <= 5"]).check_task(task)
    with pytest.raises(UserError, match="'size_coded_mb' is a size.*needs a quality metric"):
        cfg(pruner={"name": "median", "metric": "size_coded_mb"})
