"""A search whose space holds space.vocab, end to end on a tiny Llama: the share baseline runs, its KL is finite
(the logits stay over the original ids), the size objective sees the kept rows, MLflow logs vocab.keep as a
trial parameter, the plan files hold the share."""

from __future__ import annotations

import math

import pytest

from autocompress.plan import CompressionPlan
from autocompress.search.driver import run_search
from tests.support import children, make_config, stored_trials


@pytest.mark.slow  # a whole search (4 trials of a tiny Llama)
def test_a_search_over_the_vocabulary(tmp_path):
    config = make_config(
        tmp_path, model={"name": "random:llama", "task": "causal-lm"},
        data={"calibration": {"n": 4}, "evaluation": {"n": 6}, "max_length": 32},
        space={"quantize": {"bits": [8, None]}, "vocab": {"keep": [1.0, 0.5]}},
        objectives=["minimize kl", "minimize size_mb"], budget={"n_trials": 4})
    run_search(config, show_progress=False)
    trials = stored_trials(config)
    assert [t.user_attrs.get("baseline") for t in trials[:2]] == ["quantize bits=8", "vocab keep=0.5"]
    assert all(t.state.name == "COMPLETE" for t in trials)
    plans = [CompressionPlan.load(str(tmp_path / "run" / "plans" / f"trial-{t.number:04d}.json")) for t in trials[:2]]
    assert plans[0].vocab is None and plans[1].vocab.keep == 0.5 and not plans[1].layers
    metrics = [t.user_attrs["metrics"] for t in trials[:2]]
    assert math.isfinite(metrics[1]["kl"]) and metrics[1]["kl"] > 0
    assert metrics[1]["size_mb"] < metrics[0]["size_mb"]  # half the rows of both tables beat 8-bit blocks here
    _, kids = children(config.tracking.uri)
    assert any(k.data.params.get("vocab.keep") == "0.5" for k in kids)
