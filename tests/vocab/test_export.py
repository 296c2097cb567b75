"""A pruned vocabulary through the exports: the packed format stores the kept rows and the id map, agrees with
plan_size to the byte, and load_compressed gives back a model that takes the original ids (with and without the
CPU kernels); compressed-tensors and GGUF refuse it before writing anything; the model card explains it."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from autocompress.errors import UserError
from autocompress.evaluators.size import plan_size
from autocompress.export import load_compressed
from autocompress.export.formats import get_format
from autocompress.export.save import save_compressed
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from autocompress.vocab.export import card_lines
from autocompress.vocab.plan import VocabPlan
from autocompress.vocab.runtime import id_map_of


def _batch(loaded):
    return dict(loaded.tokenizer(["the cat sat on the mat", "hello world, again"], return_tensors="pt",
                                 padding=True))


def _out(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize("spec, layers", [
    ("random:llama", {"lm_head": LayerPlan(bits=8, group_size=None)}),
    ("random:llama-tied", {}),
    ("random:bert", {"embeddings.word_embeddings": LayerPlan(bits=4, group_size=32)}),
])
def test_packed_round_trip_takes_the_original_ids(spec, layers, tmp_path):
    loaded = load_model(spec)
    batch = _batch(loaded)
    plan = CompressionPlan(layers, vocab=VocabPlan(keep=0.25))
    model = apply_plan(copy.deepcopy(loaded.model), plan, [batch], info=loaded.info)
    report = save_compressed(model, plan, loaded.info, str(tmp_path), tokenizer=loaded.tokenizer)
    assert report.tensor_bytes == report.predicted_bytes == plan_size(plan, loaded.info).total_bytes
    assert report.differences == []
    written = json.loads((tmp_path / "export.json").read_text())
    assert written["vocab"] == {"keep": 0.25}
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == 30522
    for kernels in (False, True):
        loaded_back = load_compressed(str(tmp_path), kernels=kernels)
        assert torch.equal(id_map_of(loaded_back.model), id_map_of(model))
        # the CPU kernels compute in their own arithmetic (an int8 head: ~1e-3 off)
        assert torch.allclose(_out(loaded_back.model, batch), _out(model, batch), atol=1e-2 if kernels else 1e-5)
        unknown = {k: v.clone() for k, v in batch.items()}
        unknown["input_ids"][0, 1] = 30000  # an id the calibration text never used: read as the fallback
        assert torch.isfinite(_out(loaded_back.model, unknown)).all()


def test_other_formats_refuse_a_pruned_vocabulary(tmp_path):
    loaded = load_model("random:llama")
    plan = CompressionPlan({}, vocab=VocabPlan(keep=0.5))
    model = apply_plan(copy.deepcopy(loaded.model), plan, [_batch(loaded)], info=loaded.info)
    for name, label in (("compressed-tensors", "compressed-tensors export"), ("gguf", "GGUF export")):
        fmt = get_format(name)
        out = tmp_path / name
        with pytest.raises(UserError, match=f"{label}: the plan prunes the vocabulary .* --format autocompress"):
            fmt.write(model, plan, loaded.info, str(out), tokenizer=loaded.tokenizer)
        assert not out.exists() or not os.listdir(out)


def test_card_lines():
    assert card_lines(CompressionPlan({})) == []
    lines = card_lines(CompressionPlan({}, vocab=VocabPlan(keep=0.5)))
    assert lines[0] == "## Vocabulary" and "fallback" in lines[2] and "vocab 50%" in lines[2]
