"""ConfigSpace: trials become valid plans, params replay exactly, conditional and filtered choices."""

from __future__ import annotations

import optuna
import pytest

from autocompress.config import SpaceSection
from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.plan import LayerPlan, resolve_rank
from autocompress.spaces import ConfigSpace, SearchSpace
from autocompress.validation import validate_plan

optuna.logging.set_verbosity(optuna.logging.WARNING)
FIELDS = set(LayerPlan.__dataclass_fields__)
FULL = {"quantize": {"bits": [4, 8, None], "group_size": [32, None], "symmetric": [True, False],
                     "method": ["rtn", "gptq", "kmeans"], "act_bits": [None, 8]},
        "prune": {"sparsity": [0.0, 0.25, 0.5], "pattern": ["unstructured", "2:4"],
                  "method": ["magnitude", "wanda"]},
        "structured": {"sparsity": [0.0, 0.25, 0.5]},
        "lowrank": {"rank": [None, 0.25, 0.5, 0.75, 8, 40, 1000], "method": ["svd", "whitened"]}}


@pytest.fixture(scope="module")
def infos():
    return {arch: load_model(f"random:{arch}").info for arch in ("bert", "llama", "gpt2")}


def space(share="group", **sections):
    return SpaceSection.model_validate({"share": share, **(sections or FULL)})


def trials(cs, n=200, seed=0):
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        plan = cs.sample(trial)
        study.tell(trial, [0.0, 0.0])
        yield trial, plan


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("share", ["group", "layer"])
def test_random_trials_give_valid_plans_that_replay(infos, arch, share):
    info = infos[arch]
    cs = ConfigSpace(space(share), info)
    assert isinstance(cs, SearchSpace)
    units = cs.units
    seen_structured = seen_rank = False
    for trial, plan in trials(cs):
        validate_plan(plan, info)
        assert cs.plan_from_params(trial.params) == plan
        for name in trial.params:
            unit, field = name.rsplit(".", 1)
            assert field in FIELDS and unit in units
        for name, lp in plan.layers.items():
            assert not (lp.factorizes and lp.sparsity > 0 and lp.pattern != "structured"), name
            seen_structured |= lp.pattern == "structured"
            seen_rank |= lp.factorizes
        if share == "group":
            for group, members in info.groups.items():
                entries = [plan.layers.get(m, LayerPlan()) for m in members]
                assert len({e for e in entries}) == 1, group  # q/k/v (gate/up) share every setting
                assert f"{group}.bits" in trial.params
    assert seen_structured and seen_rank


def test_share_layer_gives_each_layer_its_own_unit(infos):
    info = infos["bert"]
    cs = ConfigSpace(space("layer", quantize={}), info)
    assert all(members == (unit,) for unit, members in cs.units.items())
    assert set(cs.units) == set(info.targets_by_default())
    grouped = ConfigSpace(space("group", quantize={}), info)
    assert grouped.units["encoder.layer.0.attention.self.qkv"] == info.groups["encoder.layer.0.attention.self.qkv"]


def test_conditional_params(infos):
    cs = ConfigSpace(space(), infos["llama"])
    for trial, _ in trials(cs, n=100):
        p = trial.params
        for name, value in p.items():
            unit, field = name.rsplit(".", 1)
            if field == "bits":
                assert (f"{unit}.group_size" in p) == (value is not None)
                assert (f"{unit}.quant_method" in p) == (value is not None)
            if field == "rank":
                assert (f"{unit}.rank_method" in p) == (value is not None)
                assert (value is None) or f"{unit}.pattern" not in p  # factorized units are not pruned
            if field == "sparsity" and value == 0.0:
                assert f"{unit}.prune_method" not in p
            if field == "pattern":
                assert (f"{unit}.sparsity" in p) == (value == "unstructured")


def test_single_choices_are_constants_not_params(infos):
    cs = ConfigSpace(space(quantize={"bits": [4], "group_size": [64]}), infos["bert"])
    trial, plan = next(trials(cs, n=1))
    assert trial.params == {}
    assert {lp.bits for lp in plan.layers.values()} == {4}
    assert {lp.group_size for lp in plan.layers.values()} == {64}


def test_rank_filter_never_grows_a_layer(infos):
    info = infos["bert"]
    cs = ConfigSpace(space(lowrank={"rank": [None, 0.75, 16, 1000]}), info)
    for trial, plan in trials(cs, n=100):
        for name, lp in plan.layers.items():
            li = info.layers[name]
            rank = resolve_rank(lp.rank, li.out_features, li.in_features)
            assert rank <= li.in_features * li.out_features // (li.in_features + li.out_features)
            assert lp.rank not in (1000,)
    # 64x64 attention layers: 0.75 -> 48 > 32 is dropped; 64x256 FFN layers keep it (48 <= 51)
    assert cs.ranks["encoder.layer.0.attention.self.qkv"] == [None, 16]
    assert cs.ranks["encoder.layer.0.intermediate.dense"] == [None, 0.75, 16]
    # with structured pruning able to halve the FFN, 0.75 could grow the shrunk layer: dropped too
    both = ConfigSpace(space(lowrank={"rank": [None, 0.75, 16]}, structured={"sparsity": [0.0, 0.5]}), info)
    assert both.ranks["encoder.layer.0.intermediate.dense"] == [None, 16]


def test_rank_filter_leaving_none_suggests_nothing(infos):
    cs = ConfigSpace(space(lowrank={"rank": [None, 1000]}, quantize={}), infos["bert"])
    trial, plan = next(trials(cs, n=1))
    assert not any(name.endswith(".rank") for name in trial.params)
    assert not any(lp.factorizes for lp in plan.layers.values())


def test_nm_pattern_without_unstructured_can_stay_dense(infos):
    cs = ConfigSpace(space(prune={"sparsity": [0.0, 0.5], "pattern": ["2:4"]}), infos["gpt2"])
    kinds = set()
    for trial, plan in trials(cs, n=50):
        assert set(trial.params.values()) <= {"dense", "2:4"}
        kinds |= {lp.pattern for lp in plan.layers.values()}
        assert all(lp.sparsity == 0.5 for lp in plan.layers.values())
        kinds |= {"dense"} if len(plan) < len(cs.units) else set()
    assert kinds == {"2:4", "dense"}
    always = ConfigSpace(space(prune={"sparsity": [0.5], "pattern": ["2:4"]}), infos["gpt2"])
    trial, plan = next(trials(always, n=1))
    assert trial.params == {} and len(plan) == len(always.units)


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


def test_bad_choices_are_user_errors(infos):
    with pytest.raises(UserError, match="space.lowrank.rank"):
        ConfigSpace(space(lowrank={"rank": [None, 1.5]}), infos["bert"])
    with pytest.raises(UserError, match="space.prune.pattern"):
        ConfigSpace(space(prune={"pattern": ["4:2"]}), infos["bert"])


def test_plan_from_params_rejects_params_that_do_not_fit(infos):
    cs = ConfigSpace(space(quantize={"bits": [4, 8]}), infos["bert"])
    with pytest.raises(UserError, match="not found"):
        cs.plan_from_params({})
    params = {f"{u}.bits": 4 for u in cs.units}
    assert {lp.bits for lp in cs.plan_from_params(params).layers.values()} == {4}
    with pytest.raises(UserError, match="not in"):
        cs.plan_from_params({**params, "encoder.layer.0.output.dense.bits": 3})


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_uniform_plans(infos, arch):
    info = infos[arch]
    plans = ConfigSpace(space(), info).uniform_plans()
    # act_bits offers [None, 8]: each weight-bit baseline once per activation format
    assert {"quantize bits=4 act_bits=None", "quantize bits=4 act_bits=8", "quantize bits=8 act_bits=None",
            "quantize bits=8 act_bits=8", "prune sparsity=0.5 pattern=unstructured",
            "prune sparsity=0.5 pattern=2:4", "structured sparsity=0.25", "lowrank rank=0.5"} <= set(plans)
    for name, plan in plans.items():
        assert not plan.is_empty, name
        validate_plan(plan, info)
    for act in (None, 8):
        layers = plans[f"quantize bits=4 act_bits={act}"].layers.values()
        assert {lp.bits for lp in layers} == {4} and {lp.act_bits for lp in layers} == {act}
    assert len(plans["quantize bits=4 act_bits=8"]) == len(info.targets_by_default())
    one_format = ConfigSpace(space(quantize={"bits": [4, 8], "act_bits": [8]}), info).uniform_plans()
    assert set(one_format) == {"quantize bits=4", "quantize bits=8"}  # labels as before with one format
    assert "quantize bits=4" in ConfigSpace(space(), info).main_choices()  # what sensitivity measures
    assert {lp.pattern for lp in plans["prune sparsity=0.5 pattern=2:4"].layers.values()} == {"2:4"}
    assert "lowrank rank=1000" not in plans  # fits no layer


def test_sample_needs_only_the_inventory(infos):
    """The space holds the inventory, not a model: a pickled ModelInfo is all a worker needs."""
    import pickle

    import torch

    info = pickle.loads(pickle.dumps(infos["bert"]))
    cs = ConfigSpace(space(), info)
    assert not any(isinstance(v, (torch.nn.Module, torch.Tensor)) for v in vars(cs).values())
    trial, plan = next(trials(cs, n=1))
    assert cs.plan_from_params(trial.params) == plan
    pickle.dumps(cs)


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


def test_uniform_params_reproduce_the_uniform_baselines():
    from autocompress.config import SpaceSection

    info = load_model("random:bert").info
    space = ConfigSpace(SpaceSection.model_validate({
        "quantize": {"bits": [3, 8, None], "group_size": [16, 64]},
        "structured": {"sparsity": [0.0, 0.5]}}), info)
    params = space.uniform_params()
    plans = space.uniform_plans()
    assert set(params) == set(plans) == {"quantize bits=3", "quantize bits=8", "structured sparsity=0.5"}
    for label, p in params.items():
        assert space.plan_from_params(p) == plans[label]  # other techniques switched off


def test_uniform_params_switch_off_techniques_that_share_unit_names():
    """Quantize and prune decide on the same units (layer names): the prune baseline must not quantize."""
    from autocompress.config import SpaceSection

    info = load_model("random:bert").info
    space = ConfigSpace(SpaceSection.model_validate({
        "quantize": {"bits": [2, 8, None]}, "prune": {"sparsity": [0.0, 0.5]}}), info)
    params = space.uniform_params()
    plans = space.uniform_plans()
    assert set(params) == {"quantize bits=2", "quantize bits=8", "prune sparsity=0.5 pattern=unstructured"}
    for label, p in params.items():
        assert space.plan_from_params(p) == plans[label]
    prune = space.plan_from_params(params["prune sparsity=0.5 pattern=unstructured"])
    assert all(e.bits is None and e.sparsity == 0.5 for e in prune.layers.values())


# ---- distillation in the space ------------------------------------------------------------------------------
DISTILL = {"steps": [0, 100, 200], "lr": [1e-4, 3e-4], "temperature": [2.0], "alpha": [1.0], "beta": [0.0, 1.0],
           "layers": ["all", "last"], "batch_size": 16, "max_length": 128, "eval_every": 25}


def test_distill_is_sampled_define_by_run_into_the_plan(infos):
    cs = ConfigSpace(space(quantize={"bits": [4, 8]}, distill=DISTILL), infos["bert"])
    seen_steps = set()
    for trial, plan in trials(cs, n=60):
        d = {k.split(".", 1)[1]: v for k, v in trial.params.items() if k.startswith("distill.")}
        seen_steps.add(d["steps"])
        if d["steps"] == 0:  # the other fields are drawn only when it trains
            assert plan.distill is None and set(d) == {"steps"}
        else:  # single choices (temperature, alpha) and scalars are constants, never suggested
            assert set(d) == {"steps", "lr", "beta", "layers"}
            c = plan.distill
            assert (c.steps, c.lr, c.beta, c.layers) == (d["steps"], d["lr"], d["beta"], d["layers"])
            assert (c.temperature, c.alpha, c.batch_size, c.max_length, c.eval_every) == (2.0, 1.0, 16, 128, 25)
        assert cs.plan_from_params(trial.params) == plan
    assert seen_steps == {0, 100, 200}


def test_uniform_baselines_do_not_distill(infos):
    cs = ConfigSpace(space(quantize={"bits": [4, 8]}, distill=DISTILL), infos["bert"])
    params = cs.uniform_params()
    assert params and all(p["distill.steps"] == 0 for p in params.values())
    assert all(cs.plan_from_params(p).distill is None for p in params.values())
    assert all(plan.distill is None for plan in cs.uniform_plans().values())


def test_distill_constant_steps_is_not_a_param(infos):
    cs = ConfigSpace(space(quantize={"bits": [4, 8]}, distill={"steps": 50, "lr": 1e-3, "beta": 0.0,
                                                                      "layers": "all"}), infos["bert"])
    trial, plan = next(trials(cs, n=1))
    assert not any(k.startswith("distill.") for k in trial.params)
    assert plan.distill.steps == 50 and plan.distill.lr == 1e-3 and plan.distill.beta == 0.0


@pytest.mark.parametrize("bad, words", [
    ({"steps": [-1, 10]}, "steps=-1"), ({"lr": [0.0]}, "lr=0"), ({"steps": []}, "at least one choice"),
    ({"alpha": [0.0, 1.0], "beta": 0.0}, "nothing to train"), ({"eval_every": 0}, "eval_every"),
    ({"layers": ["first"]}, "layers"), ({"stepz": [1]}, "stepz")])
def test_distill_space_errors_name_the_field(bad, words):
    from autocompress.config import SearchConfig

    with pytest.raises(UserError, match="space.distill") as err:
        SearchConfig.from_dict({"model": {"name": "x"}, "space": {"quantize": {}, "distill": bad}})
    assert words in str(err.value)


def test_kmeans_is_a_method_choice_and_refuses_distillation(infos):
    cs = ConfigSpace(space(quantize={"bits": [3, 4], "method": ["kmeans"]}), infos["bert"])
    plan = next(p for _, p in trials(cs, n=1))
    assert plan.layers and all(e.quant_method == "kmeans" for e in plan.layers.values())
    from autocompress.config import SearchConfig

    with pytest.raises(UserError, match="kmeans with space.distill.*drop kmeans or space.distill"):
        SearchConfig.from_dict({"model": {"name": "x"}, "space": {"quantize": {"method": ["rtn", "kmeans"]},
                                                                  "distill": {"steps": [0, 50]}}})


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


def test_uniform_quantize_baselines_take_the_embedding_tables_along(infos):
    info = infos["bert"]
    cs = ConfigSpace(space(quantize={"bits": [3, 4, 8, None]}, embeddings={"bits": [8, 4, None]}), info)
    plans, params = cs.uniform_plans(), cs.uniform_params()
    assert set(plans) == set(params) == {"quantize bits=3", "quantize bits=4", "quantize bits=8"}
    for label, p in params.items():
        assert cs.plan_from_params(p) == plans[label]
    word = "embeddings.word_embeddings"
    assert plans["quantize bits=8"].layers[word].bits == 8 and plans["quantize bits=4"].layers[word].bits == 4
    assert word not in plans["quantize bits=3"].layers  # 3 is not an embedding choice: the tables stay
    assert {"embeddings bits=8", "embeddings bits=4"} <= set(cs.main_choices())  # sensitivity measures them
    alone = ConfigSpace(space(embeddings={"bits": [4, None]}), info)
    assert set(alone.uniform_plans()) == {"embeddings bits=4"}


def test_uniform_baselines_follow_the_configs_order(infos):
    """The study runs the baselines in this order: a config listing bits from 8 down (as `auto` writes it)
    runs the mildest plans first; the quickstart's [4, 8] keeps its order."""
    from pathlib import Path

    import yaml

    info = infos["bert"]
    down = ConfigSpace(space(quantize={"bits": [8, 6, 4, None]}, embeddings={"bits": [8, 4, None]}), info)
    assert list(down.uniform_params()) == ["quantize bits=8", "quantize bits=6", "quantize bits=4"]
    with open(Path(__file__).parents[2] / "examples" / "quickstart.yaml", encoding="utf-8") as fh:
        quick = SpaceSection.model_validate(yaml.safe_load(fh)["space"])
    assert list(ConfigSpace(quick, info).uniform_params()) == [
        "quantize bits=4 act_bits=8", "quantize bits=4 act_bits=None", "quantize bits=8 act_bits=8",
        "quantize bits=8 act_bits=None"]


# ---- SmoothQuant in the space -------------------------------------------------------------------------------
def test_smooth_is_drawn_only_for_units_with_int8_activations(infos):
    info = infos["llama"]
    cs = ConfigSpace(space(quantize={"bits": [8, None], "group_size": [None], "act_bits": [None, 8],
                                     "smooth": [None, 0.5, 0.85]},
                           lowrank={"rank": [None, 0.25]}), info)
    seen = set()
    for trial, plan in trials(cs, n=120):
        validate_plan(plan, info)
        assert cs.plan_from_params(trial.params) == plan
        p = trial.params
        for unit, members in cs.technique_units["quantize"].items():
            factorized = [m for m in members if m in plan.layers and plan.layers[m].factorizes]
            drawn = p.get(f"{unit}.act_bits") == 8 and len(factorized) < len(members)
            assert (f"{unit}.smooth" in p) == drawn, unit
            for m in members:
                entry = plan.layers.get(m, LayerPlan())
                want = p.get(f"{unit}.smooth") if drawn and m not in factorized else None
                assert entry.smooth == want, m
                seen.add(entry.smooth)
    assert seen == {None, 0.5, 0.85}
    for trial, _ in trials(ConfigSpace(space(), info), n=40):  # no `smooth` in the config: no such param
        assert not any(name.endswith(".smooth") for name in trial.params)


def test_uniform_baselines_take_the_first_smooth_choice(infos):
    info = infos["llama"]
    cs = ConfigSpace(space(quantize={"bits": [8, None], "group_size": [None], "act_bits": [None, 8],
                                     "smooth": [0.5, None]}), info)
    plans, params = cs.uniform_plans(), cs.uniform_params()
    assert {lp.smooth for lp in plans["quantize bits=8 act_bits=8"].layers.values()} == {0.5}
    assert {lp.smooth for lp in plans["quantize bits=8 act_bits=None"].layers.values()} == {None}
    for label, p in params.items():
        assert cs.plan_from_params(p) == plans[label]


def test_a_tied_lm_head_is_never_smoothed(infos):
    info = infos["gpt2"]
    cs = ConfigSpace(space("layer", quantize={"targets": ["lm_head", "re:c_fc$"], "bits": [8], "group_size": [None],
                                              "act_bits": [8], "smooth": [0.5, 0.7]}), info)
    for trial, plan in trials(cs, n=10):
        validate_plan(plan, info)
        assert "lm_head.smooth" not in trial.params and plan.layers["lm_head"].smooth is None
        assert all(lp.smooth is not None for n, lp in plan.layers.items() if n != "lm_head")


@pytest.mark.parametrize("bad", [[0.0], [1.5], [None, -0.5]])
def test_smooth_choices_out_of_range_are_refused(bad):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="smooth"):
        space(quantize={"act_bits": [8], "smooth": bad})


def test_group_sizes_per_bit_width(infos):
    """`group_size: {8: [null], 4: [32, 64]}`: 8-bit units are per channel without a param, 4-bit units draw
    their group under `<unit>.group_size_4bit`; the uniform baselines take each width's first choice."""
    cs = ConfigSpace(space(quantize={"bits": [8, 4, None], "group_size": {8: [None], 4: [32, 64]}}),
                     infos["llama"])
    seen = set()
    for trial, plan in trials(cs, n=60):
        for unit in cs.technique_units["quantize"]:
            bits = trial.params[f"{unit}.bits"]
            assert f"{unit}.group_size" not in trial.params and f"{unit}.group_size_8bit" not in trial.params
            assert (f"{unit}.group_size_4bit" in trial.params) == (bits == 4)
        for entry in plan.layers.values():
            seen.add((entry.bits, entry.group_size))
            assert entry.bits != 8 or entry.group_size is None
    assert seen == {(8, None), (4, 32), (4, 64)}
    uniform = cs.uniform_plans()
    assert {(e.bits, e.group_size) for e in uniform["quantize bits=8"].layers.values()} == {(8, None)}
    assert {(e.bits, e.group_size) for e in uniform["quantize bits=4"].layers.values()} == {(4, 32)}


@pytest.mark.parametrize("groups, words", [({8: [None]}, "no choices for bits [4]"),
                                           ({8: [None], 4: [64], 3: [64]}, "names bits [3]"),
                                           ({8: [None], 4: []}, "for bits 4 is empty")])
def test_group_sizes_per_bit_width_must_name_each_width(groups, words):
    with pytest.raises(Exception, match=words.replace("[", r"\[").replace("]", r"\]")):
        space(quantize={"bits": [8, 4, None], "group_size": groups})
