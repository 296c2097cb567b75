"""`target.format: gguf` (spaces/formats.py): the space proposes only ggml's block types, with their
`gguf_type`, and a config asking for what GGUF cannot hold is refused in one line."""

from __future__ import annotations

import optuna
import pytest

from autocompress.config import SearchConfig, SpaceSection
from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.models import inspect_model
from autocompress.plan import GGUF_TYPES
from autocompress.spaces import ConfigSpace
from autocompress.validation import validate_plan

optuna.logging.set_verbosity(optuna.logging.WARNING)
QUANTIZE = {"bits": [2, 4, 5, 8, None], "group_size": [128, None], "symmetric": [True, False],
            "method": ["rtn", "gptq"], "act_bits": [None, 8], "smooth": [None, 0.5]}


def _config(space, fmt="gguf"):
    target = {"profile": "cpu-local", **({"format": fmt} if fmt else {})}
    return SearchConfig.from_dict({"model": {"name": "random:llama"}, "space": space, "target": target,
                                   "objectives": ["minimize kl", "minimize size_mb"]})


def _sampled(cs, n=120):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    plans = []
    for _ in range(n):
        trial = study.ask()
        plans.append((trial, cs.sample(trial)))
        study.tell(trial, 0.0)
    return plans


def test_gguf_space_proposes_only_ggml_types():
    info = load_model("random:llama").info
    space = SpaceSection.model_validate({"quantize": QUANTIZE, "embeddings": {"bits": [8, 4, 3, None],
                                                                              "symmetric": [False, True]}})
    cs = ConfigSpace(space, info, "gguf")
    seen = set()
    for trial, plan in _sampled(cs):
        validate_plan(plan, info)
        for name, entry in plan.layers.items():
            assert entry.gguf_type in GGUF_TYPES and entry.group_size == 32, name
            assert (entry.bits, entry.symmetric) == GGUF_TYPES[entry.gguf_type]
            assert entry.act_bits is None and entry.smooth is None
            seen.add(entry.gguf_type)
        drawn = {k.rsplit(".", 1)[1] for k in trial.params}
        assert not drawn & {"group_size", "act_bits", "smooth"}  # fixed by the format: never suggested
    assert seen == set(GGUF_TYPES)
    assert set(cs.uniform_plans()) == {"quantize bits=4", "quantize bits=5", "quantize bits=8"}
    for plan in cs.uniform_plans().values():
        assert all(e.gguf_type is not None for e in plan.layers.values())


def test_without_a_format_the_space_is_unchanged():
    info = load_model("random:llama").info
    space = SpaceSection.model_validate({"quantize": QUANTIZE})
    plans = [p for _, p in _sampled(ConfigSpace(space, info), 40)]
    assert not any(e.gguf_type for p in plans for e in p.layers.values())
    assert any(e.bits == 2 for p in plans for e in p.layers.values())


def test_layers_without_whole_blocks_stay_dense():
    from transformers import LlamaConfig, LlamaForCausalLM

    odd = inspect_model(LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                                     num_attention_heads=4, vocab_size=128)), "causal-lm")
    cs = ConfigSpace(SpaceSection.model_validate({"quantize": {"bits": [4]}, "share": "layer"}), odd, "gguf")
    assert list(cs.technique_units["quantize"]) == ["model.layers.0.mlp.down_proj"]  # 96 inputs; the rest 48
    with pytest.raises(UserError, match="multiple of 32"):
        ConfigSpace(SpaceSection.model_validate({"quantize": {"bits": [4], "targets": ["re:.*q_proj"]}}), odd,
                    "gguf")


@pytest.mark.parametrize("space, message", [
    ({"quantize": {"bits": [4]}, "prune": {}}, "space.prune"),
    ({"quantize": {"bits": [4]}, "structured": {}}, "space.structured"),
    ({"quantize": {"bits": [4]}, "lowrank": {}}, "space.lowrank"),
    ({"quantize": {"bits": [4]}, "distill": {"steps": [0, 50]}}, "space.distill"),
    ({"quantize": {"bits": [2, 3, None]}}, "space.quantize.bits"),
    ({"embeddings": {"bits": [6]}}, "space.embeddings.bits"),
    ({"quantize": {"bits": [4], "method": ["rtn", "kmeans"]}}, "space.quantize.method kmeans"),
])
def test_config_refuses_what_gguf_cannot_hold(space, message):
    with pytest.raises(UserError, match="target.format gguf") as err:
        _config(space)
    assert message in str(err.value) and "\n" not in str(err.value)
    _config(space, fmt=None)  # the same space is fine without the format


def test_format_is_validated():
    with pytest.raises(UserError, match="target.format"):
        _config({"quantize": {"bits": [4]}}, fmt="ggml")
    assert _config({"quantize": {"bits": [4]}, "distill": {"steps": 0}}).target_format == "gguf"
