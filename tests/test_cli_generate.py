"""`autocompress generate`: greedy completions of a packed export, compiled or eager, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch

from autocompress.cli import main
from autocompress.plan import CompressionPlan, LayerPlan

from tests.export.conftest import PLANS, ids

PROMPTS = ["hello world", "the cat sat"]


def _export(spec: str, layers: dict, tmp_path_factory) -> str:
    from autocompress.export import save_compressed
    from autocompress.loading import load_model
    from autocompress.policies import apply_plan

    lm = load_model(spec)
    plan = CompressionPlan(layers)
    calib = [{"input_ids": ids(4, 16), "attention_mask": torch.ones(4, 16, dtype=torch.long)}]
    model = apply_plan(lm.model, plan, calib, info=lm.info)
    path = str(tmp_path_factory.mktemp(spec.replace(":", "_")))
    save_compressed(model, plan, lm.info, path, tokenizer=lm.tokenizer)
    return path


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory) -> str:
    """A random tied Llama with an int4 kernel layer, pruned neurons and a 4-bit tied head: the export plan of
    tests/export (the compiled test then shares its compiled graph through torch's on-disk cache)."""
    return _export("random:llama-tied", PLANS["random:llama-tied"], tmp_path_factory)


def _reference(path: str, prompt: str, new: int) -> str:
    """The completion `model.generate` gives on the loaded export, greedy, as a user would call it."""
    from autocompress.evaluators.generation import prompt_ids
    from autocompress.export import load_compressed

    cm = load_compressed(path, kernels=True)
    ids = prompt_ids(cm.tokenizer, prompt)
    pad = cm.tokenizer.pad_token_id if cm.tokenizer.pad_token_id is not None else cm.tokenizer.eos_token_id
    with torch.inference_mode():
        out = cm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                do_sample=False, pad_token_id=pad)
    return cm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_eager_completions_are_the_loaded_exports_greedy_ones(llama_export, capsys):
    args = ["generate", llama_export, "--eager", "--max-new-tokens", "6", "--json"]
    assert main([*args, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert [r["prompt"] for r in data["results"]] == PROMPTS
    assert "int4" in data["kernels"].values()
    for result in data["results"]:
        assert result["runtime"] == "eager" and 1 <= result["new_tokens"] <= 6
        assert result["completion"] == _reference(llama_export, result["prompt"], 6)
    assert captured.err.count("ms/token, eager") == 2


def test_plain_output_prints_each_prompt_and_its_completion(llama_export, capsys):
    assert main(["generate", llama_export, "--eager", "--max-new-tokens", "4", "--prompt", PROMPTS[0]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"> {PROMPTS[0]}\n")
    assert _reference(llama_export, PROMPTS[0], 4) in out


@pytest.mark.slow
def test_compiled_decoding_gives_the_eager_completion(llama_export, capsys):
    assert main(["generate", llama_export, "--max-new-tokens", "6", "--prompt", PROMPTS[1], "--json"]) == 0
    captured = capsys.readouterr()
    (result,) = json.loads(captured.out)["results"]
    assert result["runtime"] == "compiled"
    assert result["completion"] == _reference(llama_export, PROMPTS[1], 6)
    assert "compiled, first call: compile included" in captured.err


def test_refuses_what_it_cannot_decode(llama_export, tmp_path, tmp_path_factory, capsys):
    assert main(["generate", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["generate", llama_export, "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens must be at least 1" in capsys.readouterr().err
    bert = _export("random:bert", {"encoder.layer.0.output.dense": LayerPlan(bits=8, group_size=None)},
                   tmp_path_factory)
    assert main(["generate", bert, "--eager"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoder-only causal language model; BertModel" in err
