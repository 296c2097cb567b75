"""The CLI and the KV cache: `inspect` shows its shape per token (null for an encoder); `apply` refuses a bad
kv_cache entry with exit 2 and one line."""

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


def test_apply_refuses_a_bad_kv_cache_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text('{"autocompress_plan": 1, "layers": {}, "kv_cache": {"bits": 3}}')
    assert main(["apply", "random:llama", str(bad)]) == 2
    assert "kv_cache.bits=3 is not supported; use 16 (no quantization), 8, 4 or 2" in capsys.readouterr().err
    encoder = tmp_path / "encoder.json"
    encoder.write_text('{"autocompress_plan": 1, "layers": {}, "kv_cache": {"bits": 8}}')
    assert main(["apply", "random:bert", str(encoder)]) == 2
    assert "keeps no KV cache" in capsys.readouterr().err
