"""A plan's quantized KV cache through the exports: the packed format records it and load_compressed restores
it (the reloaded model scores exactly what the compressed one did); compressed-tensors warns (strict refuses);
GGUF and the model card name llama.cpp's run-time cache types."""

from __future__ import annotations

import copy
import json

import pytest

from autocompress.data import load_texts
from autocompress.errors import UserError
from autocompress.evaluators import build_evaluator
from autocompress.export import load_compressed
from autocompress.export.ct_layers import decide
from autocompress.export.save import save_compressed
from autocompress.kvcache.export import card_lines, gguf_note, llama_cpp_types
from autocompress.kvcache.plan import KVCachePlan
from autocompress.kvcache.runtime import kv_plan_of
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama")


def _plan(llama, **kv) -> CompressionPlan:
    layer = next(iter(llama.info.targets_by_default()))
    return CompressionPlan({layer: LayerPlan(bits=8, group_size=None)}, kv_cache=KVCachePlan(**kv))


def test_the_packed_format_records_and_restores_the_cache(llama, tmp_path):
    plan = _plan(llama, bits=4, layers={1: 8})
    model = apply_plan(copy.deepcopy(llama.model), plan, info=llama.info)
    save_compressed(model, plan, llama.info, str(tmp_path), tokenizer=llama.tokenizer)
    assert json.loads((tmp_path / "export.json").read_text())["kv_cache"] == {"bits": 4, "layers": {"1": 8}}
    loaded = load_compressed(str(tmp_path))
    assert loaded.plan == plan and kv_plan_of(loaded.model) == plan.kv_cache
    evaluator = build_evaluator("next_token", llama.model, llama.tokenizer, load_texts(n=4, seed=1), batch_size=2,
                                max_length=24)
    searched, reloaded = evaluator.evaluate(model), evaluator.evaluate(loaded.model)
    assert searched == reloaded and searched["kl"] > 0


def test_compressed_tensors_warns_and_strict_refuses(llama):
    plan = _plan(llama, bits=8)
    model = apply_plan(copy.deepcopy(llama.model), plan, info=llama.info)
    warnings = decide(model, plan, llama.info).warnings
    assert any(w.startswith("kv_cache (kv 8): not written") and "--kv-cache-dtype fp8" in w for w in warnings)
    with pytest.raises(UserError, match=r"--strict: .*kv_cache"):
        decide(model, CompressionPlan({}, kv_cache=KVCachePlan(bits=8)), llama.info, strict=True)


def test_gguf_and_card_name_llama_cpp_cache_types():
    assert llama_cpp_types(KVCachePlan(bits=8)) == "q8_0"
    assert llama_cpp_types(KVCachePlan(bits=4, symmetric=True)) == "q4_0"
    assert llama_cpp_types(KVCachePlan(bits=4)) == "q4_1"
    assert "-ctk q8_0 -ctv q8_0" in gguf_note(KVCachePlan(bits=8))
    assert "no 2-bit cache type" in gguf_note(KVCachePlan(bits=2))
    assert card_lines(None) == []
    card = "\n".join(card_lines(KVCachePlan(bits=8, symmetric=True)))
    assert card.startswith("## KV cache") and "-ctk q8_0 -ctv q8_0" in card and "load_compressed" in card
