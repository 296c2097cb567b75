"""Block Influence computed once per run: written to RUN_DIR/block_influence.json, read back while the model and
calibration data are the same, measured again when they change; resolve_order fills space.depth.order."""

from __future__ import annotations

import json

from autocompress.depth.cache import FILE, fingerprint, load_or_measure, resolve_order
from tests.support import make_config


def _config(tmp_path, **data):
    return make_config(tmp_path, model={"name": "random:llama"},
                       space={"quantize": {"bits": [4, None]}, "depth": {"max_drop": 1}},
                       data={"calibration": {"n": 4, **data}, "evaluation": {"n": 4}, "max_length": 32},
                       objectives=["minimize kl", "minimize size_mb"])


def test_measured_once_then_read_back(tmp_path):
    config = _config(tmp_path)
    first, fresh = load_or_measure(config, config.run_dir)
    assert fresh and len(first["scores"]) == 2 and sorted(first["order"]) == [0, 1] and first["tokens"] > 0
    stored = json.loads((tmp_path / "run" / FILE).read_text())
    assert stored["fingerprint"] == fingerprint(config) and stored["order"] == first["order"]
    again, fresh = load_or_measure(config, config.run_dir)
    assert not fresh and again == stored
    other = _config(tmp_path, seed=1)
    assert fingerprint(other) != fingerprint(config)
    assert load_or_measure(other, other.run_dir)[1]


def test_resolve_order_fills_the_section(tmp_path):
    config = _config(tmp_path)
    resolved = resolve_order(config)
    assert resolved.space.depth.order == load_or_measure(config, config.run_dir)[0]["order"]
    assert config.space.depth.order is None and resolve_order(resolved) is resolved
    assert resolved.run_dir == config.run_dir and resolved.space.quantize == config.space.quantize


def test_a_measurement_is_announced_and_a_cached_read_is_not(tmp_path):
    config, lines = _config(tmp_path), []
    resolve_order(config, lines.append)
    assert len(lines) == 2 and lines[0].startswith("measuring Block Influence") and FILE in lines[0]
    assert lines[1].startswith("Block Influence: least important blocks first [")
    resolve_order(config, lines.append)
    assert len(lines) == 2
