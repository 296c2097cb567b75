"""The identity of what a search searched (search/rundir/identity.py): each part changes with what it stands for
and with nothing else, and `check` names the first part that differs."""

from __future__ import annotations

import shutil

import pytest

from autocompress.errors import UserError
from autocompress.search.rundir.identity import check, difference, file_fingerprint, run_identity, weights_fingerprint
from tests.support import make_config


def _saved(path, seed: int) -> str:
    import torch

    from autocompress.loading import load_model

    torch.manual_seed(seed)
    load_model("random:bert", seed=seed).model.save_pretrained(path)
    return str(path)


def test_every_part_of_a_random_model(tmp_path):
    ident = run_identity(make_config(tmp_path))
    assert ident["model"] == "random:bert" and ident["task"] == "embedding"
    assert all(ident[p] for p in ("weights", "data", "space"))
    assert ident["data.evaluation.source"] is None  # builtin: the name is in `data`
    assert run_identity(make_config(tmp_path)) == ident  # a pure function of the config
    assert weights_fingerprint("random:llama") != weights_fingerprint("random:bert")


def test_a_model_directory_is_its_weights_not_its_path(tmp_path):
    one = _saved(tmp_path / "one", seed=1)
    copy = shutil.copytree(one, tmp_path / "moved")
    other = _saved(tmp_path / "other", seed=2)  # same architecture, same header, other values
    assert weights_fingerprint(one) == weights_fingerprint(str(copy))
    assert weights_fingerprint(one) != weights_fingerprint(other)


def test_a_large_file_is_read_in_windows(tmp_path):
    big = tmp_path / "w.bin"
    data = bytearray(8 << 20)
    big.write_bytes(bytes(data))
    before = file_fingerprint(str(big))
    data[-1] = 1  # the last window holds the last byte
    big.write_bytes(bytes(data))
    assert file_fingerprint(str(big)) != before


def test_data_and_space_parts(tmp_path):
    texts = tmp_path / "eval.txt"
    texts.write_text("one text\nanother text\n")
    base = run_identity(make_config(tmp_path, data={"evaluation": {"source": str(texts), "n": 2}}))
    texts.write_text("one text\nchanged text\n")
    changed = run_identity(make_config(tmp_path, data={"evaluation": {"source": str(texts), "n": 2}}))
    assert difference(base, changed).startswith("the run measured its trials on other data: the file "
                                                "data.evaluation.source names has changed")
    moved = tmp_path / "moved.txt"
    shutil.copy(texts, moved)
    same = run_identity(make_config(tmp_path, data={"evaluation": {"source": str(moved), "n": 2}}))
    assert difference(changed, same) is None  # the file's bytes count, not its path
    more = run_identity(make_config(tmp_path, data={"evaluation": {"source": str(moved), "n": 3}}))
    assert "data section has changed" in difference(same, more)
    space = run_identity(make_config(tmp_path, space={"quantize": {"bits": [4]}}))
    assert "space section" in difference(run_identity(make_config(tmp_path)), space)


def test_check_names_the_model_and_the_fix(tmp_path):
    stored = run_identity(make_config(tmp_path))
    other = run_identity(make_config(tmp_path, model={"name": "random:llama"}))
    with pytest.raises(UserError) as info:
        check(stored, other)
    assert str(info.value) == ("the run searched random:bert (task embedding); config.yaml now names random:llama: "
                               "restore config.yaml or start a new run_dir")
    assert "the config now names" in difference(stored, other, where="the config")


def test_what_is_not_known_is_not_compared(tmp_path):
    stored = run_identity(make_config(tmp_path))
    check(None, stored)  # a study made before identities were recorded
    check({}, stored)
    gone = run_identity(make_config(tmp_path, model={"name": str(tmp_path / "not-here")}))
    assert gone["weights"] is None and gone["task"] is None
    check(stored, gone)  # the model is not on this machine (a report elsewhere): nothing to compare
    check({k: v for k, v in stored.items() if k != "space"}, {**stored, "space": "x", "later": 1})
