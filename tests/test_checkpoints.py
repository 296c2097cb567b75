"""A model's pytorch_model.bin read without running its pickle: what the file is, said in one line."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from autocompress.checkpoints import check_bin_files
from autocompress.errors import UserError
from autocompress.loading import load_model


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def state() -> dict:
    return load_model("random:bert").model.state_dict()


def _bin_model(tmp: Path, state: dict, write) -> str:
    """A random BERT directory whose weights are the pytorch_model.bin `write(path)` writes."""
    path = tmp / "model"
    load_model("random:bert").model.save_pretrained(path)
    (path / "model.safetensors").unlink()
    write(path / "pytorch_model.bin")
    return str(path)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_clean_bin_of_tensors_is_checked_and_loads(tmp_path, state, zipped):
    model = _bin_model(tmp_path, state, lambda p: torch.save(state, p, _use_new_zipfile_serialization=zipped))
    check_bin_files(model, model)
    loaded = load_model(model).model.state_dict()
    assert torch.equal(loaded["embeddings.word_embeddings.weight"], state["embeddings.word_embeddings.weight"])


@pytest.mark.parametrize("write, expected", [
    (lambda p: p.write_bytes(os.urandom(3) + b"\x00" * 5000), "is not a PyTorch checkpoint (it starts with bytes "),
    (lambda p: p.write_bytes(b""), "is not a PyTorch checkpoint (it starts with bytes nothing: it is empty"),
    (lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 100), "is a torch zip checkpoint that torch cannot read ("),
    (lambda p: p.write_bytes(pickle.dumps({"w": 1}, protocol=2)), "is a legacy pickle that torch cannot read ("),
], ids=["random-bytes", "empty", "truncated-zip", "plain-pickle-of-an-int"])
def test_what_the_loader_says_about_a_bad_bin(tmp_path, state, write, expected):
    """`load_model` (apply, export) says what the file is too, not "holds pickled objects"."""
    model = _bin_model(tmp_path, state, write)
    with pytest.raises(UserError, match="pytorch_model.bin " + expected.replace("(", r"\(")) as caught:
        load_model(model)
    assert "pickled objects" not in str(caught.value)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_naming_os_system_is_refused_unrun(tmp_path, state, protocol):
    marker = tmp_path / "PWNED"
    model = _bin_model(tmp_path, state, lambda p: p.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol)))
    with pytest.raises(UserError, match=r"holds pickled objects other than tensors.*\(it names posix.system\)"):
        check_bin_files(model, model)
    with pytest.raises(UserError, match="holds pickled objects other than tensors"):
        load_model(model)
    assert not marker.exists()


def test_bin_files_beside_safetensors_are_not_read(tmp_path):
    """transformers loads the safetensors then: a training_args.bin or a stale pytorch_model.bin is not read."""
    path = tmp_path / "model"
    load_model("random:bert").model.save_pretrained(path)
    (path / "pytorch_model.bin").write_bytes(b"junk")
    (path / "training_args.bin").write_bytes(b"junk")
    check_bin_files(str(path), "m")
    (path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="pytorch_model.bin is not a PyTorch checkpoint"):
        check_bin_files(str(path), "m")
