"""Decision units (spaces/units.py): shared groups, targets and ignore, structures, embedding tables and
tied tables."""

from __future__ import annotations

import pytest

from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.spaces import ConfigSpace
from autocompress.validation import validate_plan
from tests.spaces.support import space, trials


def test_share_layer_gives_each_layer_its_own_unit(infos):
    info = infos["bert"]
    cs = ConfigSpace(space("layer", quantize={}), info)
    assert all(members == (unit,) for unit, members in cs.units.items())
    assert set(cs.units) == set(info.targets_by_default())
    grouped = ConfigSpace(space("group", quantize={}), info)
    assert grouped.units["encoder.layer.0.attention.self.qkv"] == info.groups["encoder.layer.0.attention.self.qkv"]


def test_targets_and_ignore(infos):
    info = infos["bert"]
    sp = space(quantize={"bits": [4, 8], "targets": ["re:attention"], "ignore": ["re:output"]},
               structured={"sparsity": [0.0, 0.5], "targets": ["re:intermediate"]})
    cs = ConfigSpace(sp, info)
    for _, plan in trials(cs, n=30):
        for name, lp in plan.layers.items():
            if lp.pattern == "structured":
                assert name.endswith("intermediate") and name in info.structures
            else:
                assert "attention.self" in name and lp.bits in (4, 8)
    assert set(cs.technique_units["structured"]) == {"encoder.layer.0.intermediate", "encoder.layer.1.intermediate"}
    with pytest.raises(UserError, match="found no layers"):
        ConfigSpace(space(quantize={"targets": ["re:nothing_here"]}), info)


def test_grouped_query_heads_are_left_out_of_structured(infos):
    import dataclasses

    info = infos["llama"]
    gqa = dataclasses.replace(info, structures={
        n: dataclasses.replace(s, kv_groups=2) if s.kind == "heads" else s for n, s in info.structures.items()})
    cs = ConfigSpace(space(structured={"sparsity": [0.0, 0.5]}), gqa)
    assert set(cs.technique_units["structured"]) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    for _, plan in trials(cs, n=20):
        validate_plan(plan, gqa)
    with pytest.raises(UserError, match="grouped-query"):
        ConfigSpace(space(structured={"targets": ["re:self_attn"]}), gqa)


# ---- embedding tables ---------------------------------------------------------------------------------------
def test_embedding_tables_are_one_unit_each_whatever_share_says(infos):
    info = infos["bert"]
    tables = ("embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings")
    grouped = ConfigSpace(space(embeddings={"bits": [8, 4, None], "group_size": [32, 128]}), info)
    assert grouped.technique_units["embeddings"] == {t: (t,) for t in tables}
    seen = set()
    for trial, plan in trials(grouped, n=30):
        validate_plan(plan, info)
        assert set(trial.params) <= {f"{t}.{f}" for t in tables for f in ("bits", "group_size")}
        for t in tables:
            bits = trial.params[f"{t}.bits"]
            assert (f"{t}.group_size" in trial.params) == (bits is not None)  # define-by-run
            entry = plan.layers.get(t)
            assert (entry.bits, entry.quant_method) == (bits, "rtn") if bits else entry is None
        seen.add(len({trial.params[f"{t}.bits"] for t in tables}))
    assert max(seen) > 1  # the tables are decided apart: some trial gives them different bits
    per_table = ConfigSpace(space("layer", embeddings={"targets": ["re:word|position"]}), info)
    assert per_table.technique_units["embeddings"] == {t: (t,) for t in tables[:2]}
    gpt2 = ConfigSpace(space(embeddings={}), infos["gpt2"])  # wte is tied to lm_head: its entry goes there
    assert gpt2.technique_units["embeddings"] == {"transformer.wte": ("lm_head",),
                                                  "transformer.wpe": ("transformer.wpe",)}
    with pytest.raises(UserError, match=r"no embedding tables.*the model's tables: transformer.wte, transformer.wpe"):
        ConfigSpace(space(embeddings={"targets": ["wte"]}), infos["gpt2"])


def _llama_tied():
    return load_model("random:llama-tied").info


def test_a_tied_table_is_one_unit_whose_entry_lands_on_its_linear(infos):
    info = _llama_tied()
    assert info.embeddings["model.embed_tokens"].tied_to == "lm_head" and info.untied_tables() == []
    cs = ConfigSpace(space(quantize={"bits": [8, 4, None]}, embeddings={"bits": [8, 4, None], "group_size": [32, 128]}),
                     info)
    assert cs.technique_units["embeddings"] == {"model.embed_tokens": ("lm_head",)}
    assert "lm_head" not in {m for ms in cs.technique_units["quantize"].values() for m in ms}  # default targets
    head = info.layers["lm_head"]  # the Linear holds the table in its own layout: groups run along each token
    assert (head.out_features, head.in_features) == (30522, 64)
    seen = set()
    for trial, plan in trials(cs, n=40):
        validate_plan(plan, info)
        assert "model.embed_tokens" not in plan.layers  # a tied table is never a plan key of its own
        bits = trial.params["model.embed_tokens.bits"]  # params named by the table, as for untied tables
        entry = plan.layers.get("lm_head")
        if bits is None:
            assert entry is None and "model.embed_tokens.group_size" not in trial.params
        else:
            gs = trial.params["model.embed_tokens.group_size"]
            assert (entry.bits, entry.group_size, entry.quant_method, entry.act_bits) == (bits, gs, "rtn", None)
        assert cs.plan_from_params(trial.params) == plan
        seen.add(bits)
    assert seen == {8, 4, None}
    plans, params = cs.uniform_plans(), cs.uniform_params()
    assert plans["quantize bits=4"].layers["lm_head"].bits == 4  # uniform: every quantizable weight, head too
    assert all(cs.plan_from_params(params[label]) == plan for label, plan in plans.items())
    gpt2 = ConfigSpace(space(embeddings={"targets": ["transformer.wte"], "bits": [4, None]}), infos["gpt2"])
    plan = gpt2.plan_from_params({"transformer.wte.bits": 4})
    assert set(plan.layers) == {"lm_head"} and plan.layers["lm_head"].bits == 4


@pytest.mark.parametrize("tech", ["quantize", "lowrank"])
def test_a_tied_linear_selected_twice_is_refused(tech):
    info = _llama_tied()
    section = {"targets": ["lm_head"]} if tech == "quantize" else {"targets": ["lm_head"], "rank": [None, 8]}
    with pytest.raises(UserError, match=rf"space.embeddings and space.{tech} both select 'lm_head'.*"
                                        rf"'model.embed_tokens'.*space.{tech}.ignore.*space.embeddings.ignore"):
        ConfigSpace(space(**{tech: section, "embeddings": {}}), info)
    ConfigSpace(space(**{tech: {**section, "ignore": ["lm_head"], "targets": None}, "embeddings": {}}), info)  # fix
    gpt2 = load_model("random:gpt2").info  # the other fix, where another table remains
    ConfigSpace(space(**{tech: section, "embeddings": {"ignore": ["transformer.wte"]}}), gpt2)
    with pytest.raises(UserError, match=f"space.{tech} both select 'lm_head'"):
        ConfigSpace(space(**{tech: section, "embeddings": {}}), gpt2)


def test_a_table_its_linear_holds_transposed_is_refused():
    import dataclasses

    info = _llama_tied()  # as if the head were a GPT-2 Conv1D: [in, out] = [vocab, hidden], groups across tokens
    head = dataclasses.replace(info.layers["lm_head"], in_features=30522, out_features=64)
    turned = dataclasses.replace(info, layers={**info.layers, "lm_head": head})
    with pytest.raises(UserError, match="tied to 'lm_head', which holds it transposed.*quantize 'lm_head' through "
                                        "space.quantize"):
        ConfigSpace(space(embeddings={}), turned)


def test_a_model_without_tables_still_says_so(infos):
    import dataclasses

    bare = dataclasses.replace(infos["bert"], embeddings={})
    with pytest.raises(UserError, match="found no embedding tables.*the model has no embedding tables"):
        ConfigSpace(space(embeddings={}), bare)
