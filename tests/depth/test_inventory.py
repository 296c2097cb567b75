"""`autocompress inspect` lists the blocks a plan's drop_blocks can remove: index, name, parameters, layers."""

from __future__ import annotations

import json

from autocompress.cli import main
from autocompress.depth.inventory import blocks
from autocompress.loading import load_model


def test_blocks_of_a_model():
    info = load_model("random:gpt2").info
    rows = blocks(info)
    assert [r["name"] for r in rows] == ["transformer.h.0", "transformer.h.1"]
    assert rows[0]["params"] == info.extra["block_params"][0] > 0 and rows[0]["layers"] == 4


def test_inspect_prints_them(capsys):
    assert main(["inspect", "random:llama", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["blocks"]
    assert [b["index"] for b in listed] == [0, 1] and listed[1]["name"] == "model.layers.1"
    assert main(["inspect", "random:bert"]) == 0
    out = capsys.readouterr().out
    assert "drop_blocks" in out and "encoder.layer.1 │ 49,984" in out
