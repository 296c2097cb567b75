"""benchmarks/auto_llm.py on a tiny random tied Llama: auto, export and generate as CLI processes, one results file."""

from __future__ import annotations

import json

import pytest

from benchmarks.auto_llm import main


@pytest.mark.slow  # three CLI processes (a search, an export, a generation) on a tiny model
def test_auto_export_and_generate_on_a_random_tied_llama(tmp_path):
    stem = tmp_path / "auto"
    assert main(["--model", "random:llama-tied", "--trials", "2", "--backend", "local", "--eager",
                 "--work-dir", str(tmp_path / "work"), "--out", str(stem)]) == 0
    result = json.loads((tmp_path / "auto.json").read_text())
    assert result["counts"]["COMPLETE"] == 2 and result["front"]
    picked, export = result["picked"], result["export"]
    assert export["trial"] == picked["number"] and export["format"] == "autocompress"
    assert export["max_relative_diff"] < 1e-4  # the reloaded export measures what the search did
    assert export["file_bytes"] > 0 and export["kernels"]
    runs = result["generate"]["results"]
    assert len(runs) == 3 and all(r["runtime"] == "eager" and r["new_tokens"] > 0 for r in runs)
    assert result["generate"]["ms_per_token_after_compile"] > 0
    md = (tmp_path / "auto.md").read_text()
    assert "`autocompress auto random:llama-tied --target cpu-local --trials 2 --backend local`" in md
    assert "Q4_1" not in md and f"Picked ({result['pick_rule']}): trial {picked['number']}" in md
