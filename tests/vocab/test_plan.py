"""VocabPlan: JSON round trip inside a CompressionPlan, no-op dropped, validation (one line naming the field),
the names and rows the size model reads, MLflow params."""

from __future__ import annotations

import pytest

from autocompress.errors import UserError
from autocompress.loading import meta_inventory
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.validation import validate_plan
from autocompress.vocab.plan import (VocabPlan, check_vocab, id_map_bytes, kept_count, lm_head, token_table,
                                     vocab_rows, vocab_summary)


@pytest.fixture(scope="module")
def llama():
    return meta_inventory("random:llama")


def test_round_trip_and_equality():
    plan = CompressionPlan({"lm_head": LayerPlan(bits=8)}, vocab=VocabPlan(keep=0.5))
    again = CompressionPlan.from_json(plan.to_json())
    assert again == plan and hash(again) == hash(plan)
    assert again.to_dict()["vocab"] == {"keep": 0.5}
    ids = CompressionPlan({}, vocab=VocabPlan(keep_ids=[5, 3, 3, 9], fallback=0))
    assert CompressionPlan.from_json(ids.to_json()).vocab.keep_ids == (3, 5, 9)
    assert ids.to_dict()["vocab"] == {"keep_ids": [3, 5, 9], "fallback": 0}
    assert not ids.is_empty and "vocab 3 ids" in ids.summary()


def test_keeping_everything_is_no_plan():
    plan = CompressionPlan({}, vocab=VocabPlan(keep=1.0))
    assert plan.vocab is None and plan.is_empty and "vocab" not in plan.to_dict()
    assert CompressionPlan.from_dict({"autocompress_plan": 1, "layers": {}}).vocab is None


def test_flatten_and_summary():
    plan = CompressionPlan({}, vocab=VocabPlan(keep=0.25))
    assert plan.flatten() == {"vocab.keep": 0.25}
    assert plan.summary() == "vocab 25%"
    assert "vocab 25%" in str(plan)


@pytest.mark.parametrize("entry, message", [
    ({"keep": 0}, "vocab.keep=0 must be a share of the vocabulary in (0, 1]"),
    ({"keep": 1.5}, "vocab.keep=1.5 must be a share"),
    ({"keep": -0.1}, "vocab.keep=-0.1 must be a share"),
    ({"keep_ids": [1, -2]}, "vocab.keep_ids=-2 must be a token id"),
    ({"keep_ids": []}, "vocab.keep_ids is empty"),
    ({"keep": 0.5, "keep_ids": [1]}, "give either keep (a share) or keep_ids"),
    ({"keep": 0.5, "share": 1}, "vocab has no field 'share'"),
    ({"keep": 0.5, "fallback": "unk"}, "vocab.fallback='unk' must be a token id or \"mean\""),
])
def test_bad_entries_are_user_errors(entry, message):
    with pytest.raises(UserError, match=None) as exc:
        CompressionPlan.from_dict({"autocompress_plan": 1, "layers": {}, "vocab": entry}, where="p.json")
    assert message in str(exc.value) and str(exc.value).startswith("p.json: ")
    assert "\n" not in str(exc.value)


def test_ids_out_of_range_are_user_errors(llama):
    with pytest.raises(UserError, match=r"vocab.keep_ids: id 30522 is out of range; .* 30522 ids \(0..30521\)"):
        validate_plan(CompressionPlan({}, vocab=VocabPlan(keep_ids=[0, 30522])), llama)
    with pytest.raises(UserError, match="vocab.fallback: id 40000 is out of range"):
        check_vocab(VocabPlan(keep=0.5, fallback=40000), llama)
    with pytest.raises(UserError, match="low rank and vocab pruning"):
        validate_plan(CompressionPlan({"lm_head": LayerPlan(rank=8)}, vocab=VocabPlan(keep=0.5)), llama)


def test_names_rows_and_id_map_bytes(llama):
    assert token_table(llama) == "model.embed_tokens" and lm_head(llama) == "lm_head"
    plan = CompressionPlan({}, vocab=VocabPlan(keep=0.5))
    assert kept_count(0.5, 30522) == 15261
    assert vocab_rows(plan, llama) == {"model.embed_tokens": 15261, "lm_head": 15261}
    assert id_map_bytes(plan, llama) == 4 * 30522 and id_map_bytes(CompressionPlan({}), llama) == 0
    assert VocabPlan(keep_ids=[1, 2], fallback=0).rows(30522) == 3
    assert VocabPlan(keep_ids=[1, 2]).rows(30522) == 3  # the mean row
    assert VocabPlan(keep=0.5, fallback="mean").rows(30522) == 15261
    assert kept_count(1e-9, 100) == 1


def test_encoder_has_a_table_and_no_head():
    bert = meta_inventory("random:bert")
    assert token_table(bert) == "embeddings.word_embeddings" and lm_head(bert) is None
    assert vocab_rows(CompressionPlan({}, vocab=VocabPlan(keep=0.5)), bert) == {"embeddings.word_embeddings": 15261}
    summary = vocab_summary(bert)
    assert summary["size"] == 30522 and summary["head"] is None and 0 < summary["share"] < 1
