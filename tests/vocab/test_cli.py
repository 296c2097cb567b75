"""The CLI and the vocabulary: `inspect` shows it; `apply` refuses a bad vocab entry with exit 2 and one line,
and applies a good one."""

from __future__ import annotations

import json

from autocompress.cli import main


def test_inspect_shows_the_vocabulary(capsys):
    assert main(["inspect", "random:llama-tied", "--json"]) == 0
    vocab = json.loads(capsys.readouterr().out)["vocabulary"]
    assert vocab["size"] == 30522 and vocab["table"] == "model.embed_tokens" and vocab["tied"] is True
    assert main(["inspect", "random:bert"]) == 0
    assert "vocabulary: 30,522 tokens; table embeddings.word_embeddings:" in capsys.readouterr().out


def test_apply_refuses_a_bad_vocab_with_exit_2(tmp_path, capsys):
    for entry, message in (('{"keep": 0}', "vocab.keep=0 must be a share of the vocabulary in (0, 1]"),
                           ('{"keep_ids": [1, 99999]}', "vocab.keep_ids: id 99999 is out of range")):
        bad = tmp_path / "plan.json"
        bad.write_text('{"autocompress_plan": 1, "layers": {}, "vocab": ' + entry + "}")
        assert main(["apply", "random:llama", str(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_apply_a_share_ranks_ids_on_the_calibration_text(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text('{"autocompress_plan": 1, "layers": {}, "vocab": {"keep": 0.5}}')
    assert main(["apply", "random:llama", str(plan), "--eval", "size", "--json"]) == 0
    assert 0.5 < json.loads(capsys.readouterr().out)["metrics"]["size_ratio"] < 0.55  # both tables halved
