"""benchmarks/depth_pruning.py on a tiny random Llama: the drop orders, and a whole run writing its json and md."""

from __future__ import annotations

import json

from benchmarks.depth_pruning import main, orders


def test_orders():
    got = orders([0.3, 0.1, 0.2], [0])
    assert got["influence"] == [1, 2, 0] and got["last"] == [2, 1, 0] and sorted(got["random 0"]) == [0, 1, 2]


def test_a_run_on_a_random_llama(tmp_path):
    stem = tmp_path / "depth"
    main(["--model", "random:llama", "--max-drop", "1", "--n-texts", "2", "--length", "16", "--random-seeds", "0",
          "--out", str(stem)])
    result = json.loads((tmp_path / "depth.json").read_text())
    assert len(result["scores"]) == 2
    methods = {(r["method"], r["dropped"]) for r in result["rows"]}
    assert methods == {("influence", 0), ("influence", 1), ("last", 1), ("random 0", 1)}
    row = next(r for r in result["rows"] if r["method"] == "influence" and r["dropped"] == 0)
    assert row["kl"] < 1e-6 and row["size_ratio"] == 1.0
    md = (tmp_path / "depth.md").read_text()
    assert "| 1 |" in md and "Block Influence per block" in md
