"""`autocompress export RUN_DIR`: a searched trial, rebuilt, packed, reloaded and measured again, in MLflow."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from autocompress.cli import main
from autocompress.export import load_compressed
from autocompress.search.driver import run_search
from autocompress.search.rundir import RunDir
from tests.search.test_driver import children, make_config

SPACE = {"quantize": {"bits": [3, 4, 8], "group_size": [16, None], "method": ["rtn", "gptq"]},
         "prune": {"sparsity": [0.0, 0.5], "pattern": ["unstructured", "2:4"]},
         "structured": {"sparsity": [0.0, 0.25]}}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_run")
    config = make_config(tmp, space=SPACE, budget={"n_trials": 8}, backend={"name": "local"})
    run_search(config, show_progress=False)
    return tmp, config


def test_export_reproduces_the_searched_model(searched, capsys):
    tmp, config = searched
    run = RunDir.open(tmp / "run")
    out = tmp / "exported"
    assert main(["export", str(tmp / "run"), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    trial = run.choose()
    assert result["trial"] == trial.number
    searched_fidelity = trial.user_attrs["metrics"]["fidelity"]
    assert result["measured"]["fidelity"] == pytest.approx(searched_fidelity, abs=1e-4)
    assert abs(result["file_bytes"] / result["predicted_bytes"] - 1) < 0.01  # bytes on disk = the size model
    for name in ("model.safetensors", "config.json", "plan.json", "README.md", "export.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert f"Trial {trial.number}" in card and "fidelity" in card and "load_compressed" in card
    compressed = load_compressed(str(out))
    assert compressed.plan == run.plan(trial.number)
    # logged to the study's parent run and to the trial's own nested run
    parent, kids = children(config.tracking.uri)
    client = MlflowClient(config.tracking.uri)
    folder = f"export/trial-{trial.number:04d}"
    assert "model.safetensors" in [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(parent.info.run_id, folder)]
    kid = next(k for k in kids if k.data.tags["autocompress.trial_number"] == str(trial.number))
    assert client.list_artifacts(kid.info.run_id, folder)


def test_export_every_front_trial_and_force(searched):
    tmp, _ = searched
    run = RunDir.open(tmp / "run")
    out = tmp / "each"
    for t in run.front():
        assert main(["export", str(tmp / "run"), "--trial", str(t.number), "--out", str(out), "--force"]) == 0
        reloaded = load_compressed(str(out))
        assert reloaded.plan == run.plan(t.number)
    assert not [p for p in tmp.iterdir() if p.name.startswith(".each.")]  # no temporary directory left behind
