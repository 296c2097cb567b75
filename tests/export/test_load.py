import json
import os
import shutil

import pytest
import torch

from autocompress.errors import UserError
from autocompress.export import load_compressed
from autocompress.export.save import unmark_config
from autocompress.modules import LowRankLinear
from autocompress.policies.quantize import ACT_ATTR, act_quant_hook
from autocompress.policies.smooth import smooth_hook
from tests.export.conftest import PLANS, ids


def _last_hidden(model, x):
    with torch.no_grad():
        out = model(input_ids=x, output_hidden_states=True)
    return out.hidden_states[-1], getattr(out, "logits", None)


@pytest.mark.parametrize("spec", list(PLANS))
def test_outputs_match_the_searched_model(exported, spec):
    e = exported[spec]
    cm = load_compressed(e.path)
    assert not cm.model.training and cm.kernels == {} and cm.plan == e.plan
    assert cm.info["task"] == e.loaded.task and cm.tokenizer is not None
    assert type(cm.model) is type(e.model)
    x = ids()
    h_ref, logits_ref = _last_hidden(e.model, x)
    h, logits = _last_hidden(cm.model, x)
    assert (h - h_ref).abs().max() <= 1e-5
    if logits_ref is not None:
        assert (logits - logits_ref).abs().max() <= 1e-5
    for key, t in e.model.state_dict().items():  # the weights themselves come back exactly
        assert torch.equal(cm.model.state_dict()[key], t), key
    for name, entry in e.plan.layers.items():
        module = cm.model.get_submodule(name)
        if entry.rank is not None:
            assert isinstance(module, LowRankLinear)
        if entry.act_bits == 8:
            parts = [module.down, module.up] if isinstance(module, LowRankLinear) else [module]
            assert all(getattr(p, ACT_ATTR, None) == 8 for p in parts)
        if entry.smooth is not None:  # the stored s, divided before the int8 activations
            assert torch.equal(module._autocompress_smooth, e.model.get_submodule(name)._autocompress_smooth)
            assert list(module._forward_pre_hooks.values()) == [smooth_hook, act_quant_hook]
    assert any(entry.smooth is not None for entry in e.plan.layers.values()) == (spec in ("random:gpt2", "random:llama"))


def test_gpt2_lm_head_stays_tied(exported):
    cm = load_compressed(exported["random:gpt2"].path)
    assert cm.model.lm_head.weight is cm.model.transformer.wte.weight
    assert cm.model.transformer.h[1].attn.c_attn.up.weight.shape[0] == 3 * 48  # 3 of 4 heads kept


def test_a_tied_llama_head_stays_tied_and_exact(exported):
    """The head's 4-bit entry quantizes the shared weight: stored once under lm_head, reloaded as one
    parameter, so the table's lookups are exactly the rows of the quantized head."""
    e = exported["random:llama-tied"]
    cm = load_compressed(e.path)
    table, head = cm.model.model.embed_tokens, cm.model.lm_head
    assert head.weight is table.weight and cm.info["tied"] == {"model.embed_tokens.weight": "lm_head.weight"}
    assert torch.equal(head.weight, e.model.lm_head.weight)  # the quantized values, exactly
    assert not torch.equal(head.weight, e.loaded.model.lm_head.weight)  # (which differ from the original)
    rows = head.weight[:, :32]  # one 4-bit asymmetric group per row: at most 16 values in each
    assert max(len(r.unique()) for r in rows[:100]) <= 16
    x = ids()
    with torch.no_grad():
        assert torch.equal(table(x), e.model.lm_head.weight[x])


def _copy(exported, tmp_path):
    path = tmp_path / "export"
    shutil.copytree(exported["random:bert"].path, path)
    return path


@pytest.mark.parametrize("missing", ["export.json", "config.json", "plan.json", "model.safetensors"])
def test_not_an_export(exported, tmp_path, missing):
    path = _copy(exported, tmp_path)
    os.remove(path / missing)
    with pytest.raises(UserError, match=missing.replace(".", r"\.")):
        load_compressed(str(path))
    with pytest.raises(UserError, match="not a directory"):
        load_compressed(str(path / "plan.json"))


def test_corrupt_or_truncated_weights(exported, tmp_path):
    path = _copy(exported, tmp_path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_compressed(str(path))
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_compressed(str(path))


def test_newer_format_version(exported, tmp_path):
    path = _copy(exported, tmp_path)
    info = json.loads((path / "export.json").read_text())
    info["format_version"] += 1
    (path / "export.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="newer"):
        load_compressed(str(path))
    (path / "export.json").write_text("{not json")
    with pytest.raises(UserError, match="export.json"):
        load_compressed(str(path))


def test_an_export_of_format_version_2_still_loads(exported, tmp_path):
    path = _copy(exported, tmp_path)  # BERT's plan has no smoothed layer: its files are what version 2 wrote,
    info = json.loads((path / "export.json").read_text())  # but for the config.json version 4 marks
    info["format_version"] = 2
    (path / "export.json").write_text(json.dumps(info))
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(unmark_config(config)))
    cm = load_compressed(str(path))
    x = ids()
    assert torch.equal(_last_hidden(cm.model, x)[0], _last_hidden(load_compressed(exported["random:bert"].path).model,
                                                                  x)[0])


def test_weights_that_do_not_fit_the_config(exported, tmp_path):
    path = _copy(exported, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["hidden_size"] = 128
    config["intermediate_size"] = 512
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="does not fit"):
        load_compressed(str(path))
