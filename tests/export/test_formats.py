"""The export format registry: names, the "not available yet" answer, the files every format writes."""

from __future__ import annotations

import importlib.util

import pytest

from autocompress.errors import UserError
from autocompress.export.formats import MODULES, ExportFormat, format_names, get_format, write_side_files
from autocompress.loading import load_model


def test_unknown_format_names_the_valid_ones():
    with pytest.raises(UserError) as err:
        get_format("onnx")
    assert str(err.value) == f"--format 'onnx' is unknown; use one of: {', '.join(MODULES)}"
    assert format_names() == ["autocompress", "compressed-tensors", "gguf"]


def test_builtin_formats_write_and_load():
    for name in ("autocompress", "compressed-tensors"):
        fmt = get_format(name)
        assert isinstance(fmt, ExportFormat) and fmt.name == name and fmt.engines and fmt.loaded_by


def test_a_listed_format_without_its_module_is_not_available_yet():
    if importlib.util.find_spec(MODULES["gguf"]) is not None:
        assert isinstance(get_format("gguf"), ExportFormat)  # the GGUF writer is installed
        return
    with pytest.raises(UserError, match="--format 'gguf' is not available yet; use one of: autocompress, "
                                        "compressed-tensors"):
        get_format("gguf")


def test_side_files_of_an_encoder_have_no_generation_config(tmp_path):
    lm = load_model("random:bert")
    written = write_side_files(str(tmp_path), lm.model, lm.model.config, lm.tokenizer)
    assert "config.json" in written and "tokenizer_config.json" in written
    assert "generation_config.json" not in written and not (tmp_path / "generation_config.json").exists()
    lm = load_model("random:llama")
    assert "generation_config.json" in write_side_files(str(tmp_path / "llm"), lm.model, lm.model.config)
