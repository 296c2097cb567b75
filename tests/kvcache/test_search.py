"""A search whose space holds space.kv_cache, end to end on a tiny Llama: its baselines run, the memory objective
sees the cache's bits, MLflow logs the cache's fields as trial parameters, the plan files hold it."""

from __future__ import annotations

import json

import pytest

from autocompress.plan import CompressionPlan
from autocompress.search.driver import run_search
from tests.support import children, make_config, stored_trials


@pytest.mark.slow  # a whole search (5 trials of a tiny Llama)
def test_a_search_over_the_kv_cache(tmp_path):
    config = make_config(
        tmp_path, model={"name": "random:llama", "task": "causal-lm"},
        data={"calibration": {"n": 4}, "evaluation": {"n": 6}, "max_length": 32},
        space={"quantize": {"bits": [8, None]}, "kv_cache": {"bits": [16, 8, 2]}},
        objectives=["minimize kl", "minimize memory_mb"], budget={"n_trials": 5},
        target={"profile": "cpu-local", "mode": "decode", "batch": 4, "seq_len": 1024})
    run_search(config, show_progress=False)
    trials = stored_trials(config)
    assert [t.user_attrs.get("baseline") for t in trials[:3]] == ["quantize bits=8", "kv_cache bits=8",
                                                                 "kv_cache bits=2"]
    assert all(t.state.name == "COMPLETE" for t in trials)
    metrics = [t.user_attrs["metrics"] for t in trials[:3]]
    plans = [CompressionPlan.load(str(tmp_path / "run" / "plans" / f"trial-{t.number:04d}.json")) for t in trials[:3]]
    assert plans[0].kv_cache is None and plans[1].kv_cache.bits == 8 and plans[2].kv_cache.bits == 2
    assert metrics[0]["kl"] > 0 and metrics[2]["kl"] > metrics[1]["kl"] > 0  # the cache alone costs KL
    assert metrics[0]["memory_mb"] > metrics[1]["memory_mb"] > metrics[2]["memory_mb"]  # a long context's cache
    _, kids = children(config.tracking.uri)
    params = [k.data.params for k in kids]
    assert any(p.get("kv_cache.bits") == "2" and p.get("kv_cache.group_size") == "32" for p in params)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["counts"] == {"COMPLETE": 5}
