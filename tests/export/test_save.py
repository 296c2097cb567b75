import copy
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from autocompress.errors import UserError
from autocompress.evaluators.size import plan_size
from autocompress.export import FORMAT_VERSION, save_compressed
from autocompress.export.save import MARKER, ORIGINAL_TYPE_KEY
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from tests.export.conftest import PLANS


@pytest.mark.parametrize("spec", list(PLANS))
def test_directory_and_bytes(exported, spec):
    e = exported[spec]
    files = set(os.listdir(e.path))
    assert {"model.safetensors", "config.json", "plan.json", "README.md", "export.json",
            "tokenizer_config.json"} <= files
    size = plan_size(e.plan, e.loaded.info)
    tensors = load_file(os.path.join(e.path, "model.safetensors"))
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == size.total_bytes
    assert e.report.tensor_bytes == e.report.predicted_bytes == size.total_bytes and e.report.differences == []
    assert e.report.file_bytes == os.path.getsize(os.path.join(e.path, "model.safetensors"))
    assert e.report.formats == size.formats and e.report.per_layer == size.per_layer
    assert CompressionPlan.load(os.path.join(e.path, "plan.json")) == e.plan
    with open(os.path.join(e.path, "config.json")) as fh:
        config = json.load(fh)
    assert config["model_type"] == MARKER and config[ORIGINAL_TYPE_KEY] == e.loaded.info.model_type
    with open(os.path.join(e.path, "export.json")) as fh:
        info = json.load(fh)
    assert info["format_version"] == FORMAT_VERSION and info["task"] == e.loaded.task
    assert info["model_class"] == type(e.loaded.model).__name__
    assert info["predicted_bytes"] == info["tensor_bytes"] == size.total_bytes
    assert {n: r["layout"] for n, r in info["layers"].items()} == size.formats
    assert {n: r["bytes"] for n, r in info["layers"].items()} == size.per_layer
    with safe_open(os.path.join(e.path, "model.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    layers = json.loads(meta["layers"])
    assert meta["format_version"] == str(FORMAT_VERSION) and set(layers) == set(size.per_layer)
    assert set(layers) == {*e.loaded.info.layers, *e.loaded.info.untied_tables()}


def test_embedding_tables_are_packed(exported):
    e = exported["random:bert"]
    tensors = load_file(os.path.join(e.path, "model.safetensors"))
    word = "embeddings.word_embeddings.weight"
    assert word not in tensors and tensors[f"{word}.qweight"].numel() == 30522 * 64 // 2  # 4 bits per value
    assert tensors[f"{word}.scales"].shape == (30522, 2)  # one fp16 scale per token per 32 values
    assert tensors["embeddings.position_embeddings.weight.zeros"].shape == (128, 1)  # asymmetric, per row
    assert tensors["embeddings.token_type_embeddings.weight"].dtype == torch.float32  # not in the plan


def test_gpt2_ties_and_conv1d(exported):
    e = exported["random:gpt2"]
    tensors = load_file(os.path.join(e.path, "model.safetensors"))
    assert "transformer.wte.weight" not in tensors and "lm_head.weight.qweight" in tensors
    assert tensors["lm_head.weight.qweight"].numel() == 30522 * 64 // 2  # 4 bits per value, stored once
    assert tensors["transformer.h.0.attn.c_attn.weight.scales"].shape == (192, 2)  # [out, groups] for a Conv1D


def test_card_and_errors(tmp_path):
    lm = load_model("random:bert")
    plan = CompressionPlan({"encoder.layer.0.attention.self.query": LayerPlan(bits=8)})
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    report = save_compressed(model, plan, lm.info, str(tmp_path / "a"), card="# my card\n")
    assert (tmp_path / "a" / "README.md").read_text() == "# my card\n"
    assert "tokenizer_config.json" not in report.files
    report = save_compressed(model, plan, lm.info, str(tmp_path / "b"))
    assert "load_compressed" in (tmp_path / "b" / "README.md").read_text()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        save_compressed(model, plan, lm.info, str(tmp_path / "file"))
    bare = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UserError, match="base_config"):
        save_compressed(bare, CompressionPlan({}), lm.info, str(tmp_path / "c"))


@pytest.mark.slow
def test_minilm_mixed_plan_file_within_one_percent(minilm, tmp_path):
    if minilm.tokenizer is None:
        pytest.skip("the MiniLM package is not installed")
    layers = {}
    for i in range(6):
        b = f"encoder.layer.{i}"
        layers[f"{b}.attention.self.query"] = LayerPlan(bits=4, group_size=32)
        layers[f"{b}.attention.self.key"] = LayerPlan(bits=3)
        layers[f"{b}.attention.self.value"] = LayerPlan(bits=8, group_size=None)
        layers[f"{b}.attention.output.dense"] = LayerPlan(sparsity=0.5)
        layers[f"{b}.output.dense"] = LayerPlan(pattern="2:4")
    layers["encoder.layer.2.intermediate"] = LayerPlan(sparsity=0.25, pattern="structured")
    layers["encoder.layer.3.intermediate.dense"] = LayerPlan(rank=0.25)
    plan = CompressionPlan(layers)
    model = apply_plan(copy.deepcopy(minilm.model), plan, info=minilm.info)
    report = save_compressed(model, plan, minilm.info, str(tmp_path), tokenizer=minilm.tokenizer)
    size = plan_size(plan, minilm.info)
    assert set(size.formats.values()) == {"dense", "bitmask", "2:4", "lowrank"}
    assert report.tensor_bytes == size.total_bytes and report.differences == []
    assert abs(report.file_bytes / size.total_bytes - 1) < 0.01


def test_a_factorized_tied_lm_head_is_the_one_explained_difference(tmp_path):
    from autocompress.export import load_compressed

    lm = load_model("random:gpt2")
    plan = CompressionPlan({"lm_head": LayerPlan(rank=16, bits=4, group_size=16)})
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    report = save_compressed(model, plan, lm.info, str(tmp_path))
    wte = lm.model.transformer.wte.weight
    # plan_size counts the tied weight once, as lm_head; factorized, lm_head no longer holds it
    assert report.tensor_bytes - report.predicted_bytes == wte.numel() * 4  # wte, now stored apart
    assert report.per_layer["lm_head"] == plan_size(plan, lm.info).per_layer["lm_head"]
    assert len(report.differences) == 1 and "tied weight" in report.differences[0]
    x = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        assert torch.equal(load_compressed(str(tmp_path)).model(input_ids=x).logits, model(input_ids=x).logits)


PLAIN_LOAD = """
import sys
from transformers import {cls}
try:
    {cls}.from_pretrained(sys.argv[1])
except Exception as exc:
    print(type(exc).__name__, str(exc).splitlines()[0])
else:
    print("LOADED")
assert not any(m.startswith("autocompress") for m in sys.modules)
"""


@pytest.mark.parametrize("spec, cls", [("random:llama", "AutoModelForCausalLM"), ("random:bert", "AutoModel")])
def test_plain_transformers_refuses_the_packed_format_and_names_load_compressed(exported, spec, cls):
    """A fresh process that never imports autocompress: from_pretrained fails, naming load_compressed, instead
    of loading the packed tensors as a randomly initialized model."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", PLAIN_LOAD.format(cls=cls), exported[spec].path],
                         capture_output=True, text=True, timeout=300, cwd="/")
    assert run.returncode == 0, run.stderr[-2000:]
    said = run.stdout.strip().splitlines()[-1]
    assert said.startswith("ValueError") and "autocompress.export.load_compressed" in said, said


def test_generation_config_and_chat_template_are_written(tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    lm = load_model("random:llama")
    lm.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    lm.model.generation_config.max_new_tokens = 7
    plan = CompressionPlan({"model.layers.0.mlp.up_proj": LayerPlan(bits=4, group_size=32)})
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    save_compressed(model, plan, lm.info, str(tmp_path), tokenizer=lm.tokenizer)
    assert GenerationConfig.from_pretrained(str(tmp_path)).max_new_tokens == 7
    assert AutoTokenizer.from_pretrained(str(tmp_path)).chat_template == lm.tokenizer.chat_template
