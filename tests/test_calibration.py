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
    from autocompress.search.trial import TrialRunner

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
