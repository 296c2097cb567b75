"""The GGUF conversion cache (`autocompress.gguf_cache`): a converted entry holds exactly what transformers
dequantized as a plain Hugging Face model, is reused, is keyed by the file's content, and is never half-used:
not after a failed or killed conversion, not when two processes convert the same file at once."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from autocompress import gguf_cache
from autocompress.gguf_cache import MARKER, cache_entry, cache_root, converted_model_dir
from autocompress.loading import load_model
from tests.gguf_files import write_tiny_gguf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(path))
    return path


@pytest.fixture
def conversions(monkeypatch):
    """The files `gguf_cache.convert` was called for, in order."""
    calls = []
    real = gguf_cache.convert

    def counting(path, config, out):
        calls.append(path)
        real(path, config, out)

    monkeypatch.setattr(gguf_cache, "convert", counting)
    return calls


def entries(cache) -> list[str]:
    """The complete-looking entries: directories, temporary ones (named .*) left out."""
    folder = cache / "gguf"
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.mark.parametrize("tied", [True, False])
def test_entry_is_what_transformers_dequantized_as_a_plain_model(tmp_path, cache, tied):
    import transformers

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", tied=tied)
    loaded = load_model(gguf)
    entry = cache_entry(gguf)[0]
    assert loaded.source == str(entry) and entry.parent == cache / "gguf" and entry.name.startswith("tiny-")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", MARKER} <= set(os.listdir(entry))
    config = json.loads((entry / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is tied
    direct = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf").state_dict()
    ours = loaded.model.state_dict()
    assert set(ours) == set(direct) and all(torch.equal(ours[k], v) and ours[k].dtype == v.dtype
                                            for k, v in direct.items())
    model = loaded.model
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    assert loaded.tokenizer("the cat").input_ids == \
        transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")("the cat").input_ids
    assert loaded.tokenizer.chat_template


def test_second_load_reads_the_cache(tmp_path, cache, conversions):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    first = load_model(gguf)
    mtime = os.stat(first.source).st_mtime_ns
    second = load_model(gguf)
    assert conversions == [gguf] and second.source == first.source and os.stat(first.source).st_mtime_ns == mtime
    assert converted_model_dir(gguf, gguf) == first.source and conversions == [gguf]


def test_a_changed_file_gets_a_new_entry(tmp_path, cache, conversions):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", seed=0)
    old = load_model(gguf)
    write_tiny_gguf(tmp_path / "tiny.gguf", seed=1)  # same path, new content
    new = load_model(gguf)
    assert len(conversions) == 2 and new.source != old.source and len(entries(cache)) == 2
    w = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(new.model.state_dict()[w], old.model.state_dict()[w])


def test_half_written_and_stale_entries_are_never_used(tmp_path, cache, conversions):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    entry, identity = cache_entry(gguf)
    entry.mkdir(parents=True)  # an entry without its marker (a copy cut short): not complete
    (entry / "config.json").write_text("{}")
    debris = entry.parent / f".{entry.name}.tmp-99999-deadbeef"  # left by a conversion killed mid-way
    debris.mkdir()
    (debris / "model.safetensors").write_bytes(b"half")
    assert load_model(gguf).source == str(entry) and len(conversions) == 1
    assert not debris.exists() and json.loads((entry / MARKER).read_text())["sha256"] == identity["sha256"]

    marker = json.loads((entry / MARKER).read_text())  # an entry from another conversion version: stale
    (entry / MARKER).write_text(json.dumps({**marker, "conversion_version": -1}))
    load_model(gguf)
    assert len(conversions) == 2 and json.loads((entry / MARKER).read_text()) == marker


def test_a_failed_conversion_leaves_nothing(tmp_path, cache, monkeypatch):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")

    def failing(path, config, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise MemoryError("out of memory half-way")

    monkeypatch.setattr(gguf_cache, "convert", failing)
    with pytest.raises(MemoryError):
        load_model(gguf)
    assert entries(cache) == [] and [p for p in (cache / "gguf").iterdir() if p.is_dir()] == []


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("AUTOCOMPRESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "autocompress"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "autocompress"


def test_the_session_cache_is_a_tmp_dir(autocompress_cache):
    """No test converts into the user's own cache (tests/conftest.py)."""
    assert cache_root() == autocompress_cache and str(autocompress_cache) != os.path.expanduser("~/.cache")


# A process that converts `gguf` once `go` exists, its conversion slowed down (so that two of them overlap),
# or stopped inside the conversion forever (so that it can be killed there).
CONVERTER = """
import os, sys, time
from autocompress import gguf_cache
gguf, go, mode = sys.argv[1:]
real = gguf_cache.convert
def slow(path, config, out):
    real(path, config, out)
    open(str(out) + ".written", "w").close()
    time.sleep(2 if mode == "slow" else 600)
gguf_cache.convert = slow
open(go + "." + str(os.getpid()), "w").close()
while not os.path.exists(go):
    time.sleep(0.02)
print(gguf_cache.converted_model_dir(gguf, gguf))
"""


def start(gguf, go, mode):
    return subprocess.Popen([sys.executable, "-c", CONVERTER, gguf, str(go), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=180.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_two_processes_converting_at_once_convert_once(tmp_path, cache):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    go = tmp_path / "go"
    procs = [start(gguf, go, "slow") for _ in range(2)]
    wait_for(lambda: len(list(tmp_path.glob("go.*"))) == 2)  # both imported and waiting
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    entry = str(cache_entry(gguf)[0])
    assert [o[0].strip() for o in outs] == [entry, entry]
    assert sum(o[1].count("autocompress: converting") for o in outs) == 1
    assert entries(cache) == [os.path.basename(entry)]
    assert load_model(gguf).source == entry


def test_a_conversion_killed_mid_way_is_never_used(tmp_path, cache, conversions):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    go = tmp_path / "go"
    go.touch()
    proc = start(gguf, go, "hang")
    try:
        wait_for(lambda: list((cache / "gguf").glob(".*.tmp-*.written")) if (cache / "gguf").exists() else [])
    finally:
        proc.kill()
        proc.communicate()
    assert entries(cache) == [] and list((cache / "gguf").glob(".*.tmp-*"))  # the dead process's debris
    loaded = load_model(gguf)
    assert conversions == [gguf] and entries(cache) == [os.path.basename(loaded.source)]
    assert not [p for p in (cache / "gguf").glob(".*.tmp-*") if p.is_dir()]


def test_a_search_preflight_converts_once_and_its_workers_only_read(tmp_path, cache, conversions, capfd):
    """A search converts a GGUF on the driver, in its preflight, before any worker starts; a worker's load
    (TrialRunner, as on every backend) then reads the entry without converting or rewriting it."""
    from autocompress.config import SearchConfig
    from autocompress.search.preflight import preflight
    from autocompress.search.workers.runner import TrialRunner

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    config = SearchConfig.from_dict({
        "model": {"name": gguf}, "space": {"quantize": {"bits": [4, 8]}}, "tracking": {"uri": "none"},
        "objectives": ["minimize kl", "minimize size_mb"],
        "data": {"calibration": {"n": 4}, "evaluation": {"n": 4}, "max_length": 32},
        "run_dir": str(tmp_path / "run")}).resolved(tmp_path)
    assert entries(cache) == []
    assert preflight(config) == "causal-lm"
    assert conversions == [gguf] and len(entries(cache)) == 1 and not (tmp_path / "run").exists()
    err = capfd.readouterr().err
    assert err.count("autocompress: converting") == 1 and f"converting {gguf} once" in err
    entry = cache / "gguf" / entries(cache)[0]
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    runner = TrialRunner(config)
    assert runner.loaded.source == str(entry) and conversions == [gguf]
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps  # read, not written
    assert preflight(config) == "causal-lm" and conversions == [gguf]  # a second search converts nothing
    assert "converting" not in capfd.readouterr().err
