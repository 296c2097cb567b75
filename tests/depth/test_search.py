"""A search whose space holds space.depth, end to end on a tiny Llama: Block Influence resolved into the run's
config.yaml (and the MLflow parent run's params) once, trials that drop a block complete with smaller size and
memory, the plan files and MLflow trial params hold the dropped blocks, the baseline drops none; `export` of a
trial that dropped a block writes the smaller model and measures exactly the searched metrics again."""

from __future__ import annotations

import json

import pytest
import yaml

from autocompress.depth.cache import FILE
from autocompress.export.from_run import export
from autocompress.plan import CompressionPlan
from autocompress.search.driver import run_search
from tests.support import children, make_config, stored_trials


@pytest.mark.slow  # a whole search (6 trials of a tiny Llama)
def test_a_search_over_the_depth(tmp_path):
    config = make_config(
        tmp_path, model={"name": "random:llama", "task": "causal-lm"},
        data={"calibration": {"n": 4}, "evaluation": {"n": 6}, "max_length": 32},
        space={"quantize": {"bits": [8, None]}, "depth": {"max_drop": 1}},
        objectives=["minimize kl", "minimize memory_mb"], budget={"n_trials": 6},
        target={"profile": "cpu-local", "mode": "decode", "batch": 1, "seq_len": 256})
    run_search(config, show_progress=False)
    influence = json.loads((tmp_path / "run" / FILE).read_text())
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["space"]["depth"]["order"] == influence["order"] and sorted(influence["order"]) == [0, 1]
    trials = stored_trials(config)
    assert trials[0].user_attrs.get("baseline") == "quantize bits=8"
    assert all(t.state.name == "COMPLETE" for t in trials)
    plans = {t.number: CompressionPlan.load(str(tmp_path / "run" / "plans" / f"trial-{t.number:04d}.json"))
             for t in trials}
    assert plans[trials[0].number].drop_blocks == ()
    dropped = [t for t in trials if plans[t.number].drop_blocks]
    kept = [t for t in trials if not plans[t.number].drop_blocks]
    assert dropped and kept
    assert all(plans[t.number].drop_blocks == (influence["order"][0],) for t in dropped)
    assert max(t.user_attrs["metrics"]["memory_mb"] for t in dropped) \
        < min(t.user_attrs["metrics"]["memory_mb"] for t in kept)
    parent, kids = children(config.tracking.uri)
    assert "space.depth.order" in parent.data.params
    assert any(k.data.params.get("drop_blocks") == str(influence["order"][0]) for k in kids)
    result = export(tmp_path / "run", tmp_path / "exported", trial=dropped[0].number, log=False)
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["num_hidden_layers"] == 1
    searched = dropped[0].user_attrs["metrics"]
    assert result.measured == {k: searched[k] for k in result.measured}
    assert result.file_bytes >= result.predicted_bytes > 0
