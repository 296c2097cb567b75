"""`autocompress inspect` shows the KV cache's shape per token (a causal LM), and null for an encoder."""

from __future__ import annotations

import json

from autocompress.cli import main


def test_inspect_lists_the_kv_cache(capsys):
    assert main(["inspect", "random:llama", "--json"]) == 0
    kv = json.loads(capsys.readouterr().out)["kv_cache"]
    assert kv == {"blocks": 2, "kv_heads": 4, "head_dim": 16, "values_per_token": 256}
    assert main(["inspect", "random:llama"]) == 0
    assert "KV cache: 2 blocks x 4 kv heads x 16 channels x 2 = 256 values per token" in capsys.readouterr().out
    assert main(["inspect", "random:bert", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_cache"] is None
