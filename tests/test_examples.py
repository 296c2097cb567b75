"""Every example config validates (fast), and passes the search's preflight (model, metrics, space on the model's
inventory, data, storage, pick rule) without loading weights or writing anything."""

from pathlib import Path

import pytest

from autocompress.config import SearchConfig
from autocompress.search.preflight import preflight

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_every_example_config_is_listed_here_and_validates():
    assert {p.name for p in EXAMPLES.glob("*.yaml")} == {"quickstart.yaml", "joint_space.yaml", "llm.yaml",
                                                        "llm_gguf.yaml", "llm_techniques.yaml"}
    for path in EXAMPLES.glob("*.yaml"):
        SearchConfig.from_yaml(str(path))  # keys, types, ranges, metrics, pick rule


@pytest.mark.parametrize("name", ["quickstart.yaml", "joint_space.yaml"])
def test_minilm_examples_pass_preflight(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = SearchConfig.from_yaml(str(EXAMPLES / name))
    assert preflight(config) == "embedding"
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow  # reads the SmolLM2 GGUF's header and tokenizer (tens of seconds)
def test_llm_example_passes_preflight_and_searches_what_it_says(smollm2_gguf, tmp_path, monkeypatch):
    """llm.yaml on SmolLM2 (header only): GPTQ bits per layer group, FFN neurons and low rank on down_proj in
    the last ten blocks, the tied table, against KL, decode latency on cpu-local and size, with a constraint and a pick rule."""
    from autocompress.loading import meta_inventory
    from autocompress.spaces import ConfigSpace

    monkeypatch.chdir(tmp_path)
    config = SearchConfig.from_yaml(str(EXAMPLES / "llm.yaml"))
    assert preflight(config) == "causal-lm"
    assert not any(tmp_path.iterdir())
    assert config.objectives == ["minimize kl", "minimize latency_ms", "minimize size_mb"]
    assert config.constraints and config.pick.startswith("minimize latency_ms where kl")
    assert (config.target.profile, config.target.mode) == ("cpu-local", "decode")
    assert config.data.evaluation.source == "python-docs" and config.data.calibration.sequential is False
    assert (config.backend.name, config.backend.workers) == ("ray", 2)
    info = meta_inventory(config.model.name)
    units = ConfigSpace(config.space, info).technique_units
    assert len(units["quantize"]) == 4 * 30 and config.space.quantize.method == ["gptq"]
    assert set(units["structured"]) == {f"model.layers.{i}.mlp" for i in range(20, 30)}  # the last ten blocks
    assert set(units["lowrank"]) == {f"model.layers.{i}.mlp.down_proj" for i in range(20, 30)}
    assert units["embeddings"] == {"model.embed_tokens": ("lm_head",)}  # the tied head


@pytest.mark.slow  # reads the SmolLM2 GGUF's header and tokenizer
def test_llm_gguf_example_searches_only_ggml_types(smollm2_gguf, tmp_path, monkeypatch):
    from autocompress.loading import meta_inventory
    from autocompress.spaces import ConfigSpace

    monkeypatch.chdir(tmp_path)
    config = SearchConfig.from_yaml(str(EXAMPLES / "llm_gguf.yaml"))
    assert preflight(config) == "causal-lm" and config.target_format == "gguf"
    space = ConfigSpace(config.space, meta_inventory(config.model.name), config.target_format)
    plans = space.uniform_plans()
    assert set(plans) == {"quantize bits=8", "quantize bits=5", "quantize bits=4"}
    assert {e.gguf_type for e in plans["quantize bits=4"].layers.values()} == {"Q4_0"}
