"""calibration.py: calibration texts sized in tokens for the widest layer, and the sequential-GPTQ default."""

import pytest

from autocompress.calibration import (
    TOKENS_PER_INPUT, calibration_texts, min_tokens, resolve_sequential, space_is_data_aware,
)
from autocompress.config import SearchConfig
from autocompress.data import load_texts
from autocompress.errors import UserError
from autocompress.loading import load_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("random:bert").tokenizer


def _tokens(tokenizer, texts, max_length=32):
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])


def test_enough_tokens_keeps_the_seeded_sample(tokenizer):
    assert calibration_texts(tokenizer, "builtin", 12, 5, 32, 0) == load_texts("builtin", n=12, seed=5)
    sample = load_texts("builtin", n=12, seed=5)
    assert calibration_texts(tokenizer, "builtin", 12, 5, 32, _tokens(tokenizer, sample)) == sample


def test_too_few_tokens_extends_the_sample_deterministically(tokenizer):
    sample = load_texts("builtin", n=12, seed=5)
    need = 3 * _tokens(tokenizer, sample)
    texts = calibration_texts(tokenizer, "builtin", 12, 5, 32, need)
    assert texts[:12] == sample and len(texts) > 12 and len(set(texts)) == len(texts)
    assert _tokens(tokenizer, texts) >= need > _tokens(tokenizer, texts[:-1])  # no more texts than needed
    assert calibration_texts(tokenizer, "builtin", 12, 5, 32, need) == texts
    assert calibration_texts(tokenizer, "builtin", 12, 6, 32, need) != texts
    # the same seed with a larger n: the extension still starts from that n's own sample
    assert calibration_texts(tokenizer, "builtin", 20, 5, 32, need)[:20] == load_texts("builtin", n=20, seed=5)


def test_a_source_too_small_raises_naming_the_field(tmp_path, tokenizer):
    source = tmp_path / "few.txt"
    source.write_text("one short text\nanother short text\na third one\n")
    with pytest.raises(UserError, match=r"data\.calibration\.n: .*at least 1000 calibration tokens"):
        calibration_texts(tokenizer, str(source), 2, 0, 32, 1000)
    assert _tokens(tokenizer, load_texts(str(source))) == 15  # 5 each, with [CLS] and [SEP]
    assert sorted(calibration_texts(tokenizer, str(source), 2, 0, 32, 14)) == sorted(load_texts(str(source)))


def test_the_rules():
    assert min_tokens([64, 1536, 576]) == TOKENS_PER_INPUT * 1536 == 6144 and min_tokens([]) == 0
    assert resolve_sequential(None, "causal-lm") and not resolve_sequential(None, "embedding")
    assert resolve_sequential(True, "embedding") and not resolve_sequential(False, "causal-lm")
    space = lambda **s: SearchConfig.from_dict({"model": {"name": "random:bert"}, "space": s}).space  # noqa: E731
    assert not space_is_data_aware(space(quantize={"bits": [4]}))  # rtn only
    assert space_is_data_aware(space(quantize={"method": ["rtn", "gptq"]}))
    assert space_is_data_aware(space(prune={}))  # wanda by default
    assert not space_is_data_aware(space(lowrank={"method": ["svd"]}, embeddings={}))


@pytest.mark.parametrize("spec, sequential", [("random:llama", True), ("random:bert", False)])
def test_a_search_worker_sizes_its_calibration(tmp_path, spec, sequential):
    from autocompress.search.workers.runner import TrialRunner

    config = SearchConfig.from_dict({
        "model": {"name": spec}, "data": {"calibration": {"n": 4}, "evaluation": {"n": 8}, "max_length": 32},
        "space": {"quantize": {"bits": [4], "method": ["gptq"]}}, "tracking": {"uri": "none"},
        "run_dir": str(tmp_path / "run")}).resolved(tmp_path)
    runner = TrialRunner(config)
    widest = max(li.in_features for li in runner.info.layers.values())
    tokens = sum(int(b["attention_mask"].sum()) for b in runner.calibration.batches)
    assert tokens >= TOKENS_PER_INPUT * widest and len(runner.calibration.batches) > 1
    assert runner.calibration.sequential is sequential
    off = config.model_copy(update={"data": config.data.model_copy(update={"calibration": config.data.calibration.model_copy(
        update={"sequential": not sequential})})})
    assert TrialRunner(off).calibration.sequential is (not sequential)


def test_excluded_texts_are_never_taken(tokenizer):
    evaluation = load_texts("builtin", n=40, seed=0)
    plain = calibration_texts(tokenizer, "builtin", 30, 5, 32, 0)
    assert calibration_texts(tokenizer, "builtin", 30, 5, 32, 0, exclude=()) == plain  # backward compatible
    # the same source, with a sample that overlaps the evaluation draw: the overlap is replaced, n kept
    overlapping = load_texts("builtin", n=30, seed=5)
    evaluation = overlapping[:10] + evaluation
    texts = calibration_texts(tokenizer, "builtin", 30, 5, 32, 0, exclude=evaluation)
    assert len(texts) == 30 and not set(texts) & set(evaluation)
    assert [t for t in texts if t in overlapping] == overlapping[10:]  # the sample's order, then the seeded rest
    # the top-up skips them too
    need = 4 * _tokens(tokenizer, texts)
    topped = calibration_texts(tokenizer, "builtin", 30, 5, 32, need, exclude=evaluation)
    assert topped[:30] == texts and _tokens(tokenizer, topped) >= need and not set(topped) & set(evaluation)


def test_too_few_tokens_outside_the_excluded_texts_names_the_field(tmp_path, tokenizer):
    source = tmp_path / "few.txt"
    source.write_text("one short text\nanother short text\na third one\n")
    assert calibration_texts(tokenizer, str(source), 3, 0, 32, 10) != []  # enough with all three (15 tokens)
    with pytest.raises(UserError, match=r"--n-calibration: .*at least 10 calibration tokens.*all 1 texts of .* "
                                        r"outside the 2 evaluation texts give only 5"):
        calibration_texts(tokenizer, str(source), 3, 0, 32, 10, field="--n-calibration",
                          exclude=["one short text", "a third one"])
    with pytest.raises(UserError, match=r"data\.calibration\.n: all 3 texts of .* are evaluation texts"):
        calibration_texts(tokenizer, str(source), 3, 0, 32, 0, exclude=load_texts(str(source)))


def test_a_search_worker_calibrates_apart_from_its_evaluation(tmp_path):
    from autocompress.search.workers.runner import TrialRunner

    source = tmp_path / "texts.txt"
    source.write_text("".join(f"text number {i} of the shared source\n" for i in range(20)))
    config = SearchConfig.from_dict({
        "model": {"name": "random:bert"}, "space": {"quantize": {"bits": [8]}}, "tracking": {"uri": "none"},
        "run_dir": str(tmp_path / "run"),
        "data": {"calibration": {"source": str(source), "n": 20}, "evaluation": {"source": str(source), "n": 12},
                 "max_length": 32}}).resolved(tmp_path)
    runner = TrialRunner(config)
    evaluation = set(load_texts(str(source), n=12, seed=0))
    tok = runner.loaded.tokenizer
    calibrated = [tok.decode(ids[mask.bool()], skip_special_tokens=True)
                  for b in runner.calibration.batches for ids, mask in zip(b["input_ids"], b["attention_mask"])]
    assert len(calibrated) == 8 and not set(calibrated) & evaluation
    assert set(calibrated) | evaluation == set(load_texts(str(source)))
