"""prune_vocab through apply_plan on small random models: rows kept, ties kept, the original ids taken, the
kept ids' logits exactly the original's, specials and the fallback always kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from autocompress.vocab.apply import special_tokens
from autocompress.vocab.plan import VocabPlan
from autocompress.vocab.runtime import fallback_class, id_map_of


def _batch(loaded):
    return dict(loaded.tokenizer(["the cat sat on the mat", "hello world"], return_tensors="pt", padding=True))


@pytest.mark.parametrize("spec", ["random:llama", "random:llama-tied", "random:gpt2"])
def test_decoders_keep_the_kept_logits(spec):
    loaded = load_model(spec)
    batch = _batch(loaded)
    plan = CompressionPlan({}, vocab=VocabPlan(keep=0.25))
    model = apply_plan(copy.deepcopy(loaded.model), plan, [batch], info=loaded.info)
    table, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert table.weight.shape[0] == head.weight.shape[0] == round(0.25 * 30522)
    assert (head.weight is table.weight) == (spec != "random:llama")
    with torch.no_grad():
        ours, theirs = model(**batch).logits, loaded.model(**batch).logits
    kept = torch.unique(batch["input_ids"])  # every calibration token is kept
    assert ours.shape == theirs.shape
    assert torch.allclose(ours[..., kept], theirs[..., kept], atol=1e-5)
    specials, unk = special_tokens(loaded.model)
    assert unk == loaded.tokenizer.unk_token_id  # the MiniLM tokenizer's [UNK]: a dedicated unknown token
    id_map = id_map_of(model)
    dropped = int((id_map == id_map[unk]).nonzero()[-1])  # the fallback and every dropped id share a logit
    assert dropped != unk and torch.equal(ours[..., dropped], ours[..., unk])
    rows = id_map[torch.tensor(specials)].tolist()
    assert len(set(rows)) == len(specials)  # each special has its own row


def test_encoder_prunes_the_table_only():
    loaded = load_model("random:bert")
    batch = _batch(loaded)
    model = apply_plan(copy.deepcopy(loaded.model), CompressionPlan({}, vocab=VocabPlan(keep=0.5)), [batch],
                       info=loaded.info)
    assert model.get_input_embeddings().weight.shape == (15261, 64)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, loaded.model(**batch).last_hidden_state)
    assert loaded.tokenizer.unk_token_id in (id_map_of(model) == id_map_of(model)[loaded.tokenizer.unk_token_id]) \
        .nonzero().flatten().tolist()


def test_dropped_ids_read_the_fallback_row():
    loaded = load_model("random:llama")
    keep = [0, 1, 2, 10, 11]
    model = apply_plan(copy.deepcopy(loaded.model), CompressionPlan({}, vocab=VocabPlan(keep_ids=keep, fallback=0)),
                       info=loaded.info)
    table = model.get_input_embeddings()
    assert torch.equal(table(torch.tensor([500, 11])), table.weight[[0, 4]])
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.out_features == 5


def test_composes_with_quantization_of_the_head():
    loaded = load_model("random:llama")
    plan = CompressionPlan({"lm_head": LayerPlan(bits=4, group_size=32)}, vocab=VocabPlan(keep=0.5))
    model = apply_plan(copy.deepcopy(loaded.model), plan, [_batch(loaded)], info=loaded.info)
    assert model.lm_head.weight.shape[0] == 15261
    with torch.no_grad():
        assert torch.isfinite(model(**_batch(loaded)).logits).all()


def test_a_share_needs_calibration_batches():
    loaded = load_model("random:llama")
    with pytest.raises(UserError, match="vocab.keep=0.5 ranks tokens by their frequency in the calibration data"):
        apply_plan(copy.deepcopy(loaded.model), CompressionPlan({}, vocab=VocabPlan(keep=0.5)), info=loaded.info)


def test_the_mean_row_stands_for_every_dropped_id():
    loaded = load_model("random:llama")
    keep = [0, 1, 2, 10, 11]
    model = apply_plan(copy.deepcopy(loaded.model), CompressionPlan({}, vocab=VocabPlan(keep_ids=keep)),
                       info=loaded.info)
    table, base = model.get_input_embeddings(), loaded.model.get_input_embeddings().weight
    dropped = torch.ones(30522, dtype=torch.bool)
    dropped[keep] = False
    assert table.weight.shape[0] == 6 and torch.allclose(table.weight[5], base[dropped].mean(0))
    assert torch.allclose(model.lm_head.weight[5], loaded.model.lm_head.weight[dropped].mean(0))
    assert torch.equal(table(torch.tensor([500, 11])), table.weight[[5, 4]])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[0, 1, 500]])).logits
    assert torch.equal(logits[..., 500], logits[..., 3]) and not torch.equal(logits[..., 500], logits[..., 0])


def test_a_share_with_the_mean_row_keeps_one_id_fewer():
    loaded = load_model("random:llama-tied")
    plan = CompressionPlan({}, vocab=VocabPlan(keep=0.25, fallback="mean"))
    model = apply_plan(copy.deepcopy(loaded.model), plan, [_batch(loaded)], info=loaded.info)
    assert model.get_input_embeddings().weight.shape[0] == 7630 == plan.vocab.rows(30522)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert int(id_map_of(model)[30000]) == 7629  # a dropped id reads the mean row, the last


def test_greedy_generation_runs_on_original_ids():
    loaded = load_model("random:llama")
    batch = _batch(loaded)
    model = apply_plan(copy.deepcopy(loaded.model), CompressionPlan({}, vocab=VocabPlan(keep=0.25)), [batch],
                       info=loaded.info)
    ids = batch["input_ids"][:1, :4]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         pad_token_id=0)
    new = out[0, 4:]
    assert new.numel() == 5
    # a kept token's logit is its own; a dropped one's is shared with 22,891 others, so greedy picks kept ids
    assert not fallback_class(id_map_of(model), new).any()
