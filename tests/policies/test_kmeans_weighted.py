"""Sensitivity-weighted k-means (`kmeans_weighting: activation`, policies/kmeans_weighted.py)."""

import copy

import pytest
import torch
from pydantic import ValidationError

from autocompress.calibration import space_is_data_aware
from autocompress.config_sections import QuantizeSpace
from autocompress.errors import UserError
from autocompress.export import load_compressed, save_compressed
from autocompress.models import inspect_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import Calibration, apply_plan
from autocompress.policies.kmeans import cluster, codebook_violation
from autocompress.policies.kmeans_weighted import activation_importance, weighted_kmeans_1d
from autocompress.policies.memo import BaseModelMemo
from autocompress.policies.quantize import GRID_ATTR
from autocompress.policies.verify import plan_violations

WEIGHTED = dict(bits=4, quant_method="kmeans", kmeans_weighting="activation")


def _w(rows=64, cols=256, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def _skewed(cols=256, seed=1):
    """Activation second moments as LLM inputs have them: a few outlier channels, a heavy tail."""
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(torch.randn(cols, generator=g) * 1.5)
    s[torch.randperm(cols, generator=g)[:8]] *= 300.0
    return s


def _error(w, q, s):
    return float((((w.detach() - q.detach()) ** 2) * s).sum())


@pytest.mark.parametrize("bits,group_size,at_most", [(4, None, 0.9), (3, 16, 0.85), (4, 16, 0.8)])
def test_weighting_lowers_the_activation_weighted_error(bits, group_size, at_most):
    w, s = _w(), _skewed()  # measured: 0.79, 0.79, 0.70 of the unweighted codebooks' weighted error
    plain, _ = cluster(w, bits, group_size)
    weighted, book = cluster(w, bits, group_size, importance=s)
    assert _error(w, weighted, s) < at_most * _error(w, plain, s)
    assert _error(w, weighted, torch.ones_like(s)) > _error(w, plain, torch.ones_like(s))  # the price: plain error
    entry = LayerPlan(bits=bits, group_size=group_size, quant_method="kmeans", kmeans_weighting="activation")
    assert codebook_violation(weighted, entry, book) is None  # the same codebook contract


def test_never_worse_than_unweighted_on_the_weighted_error():
    for seed in range(6):  # the unweighted result is one of the starts; fp16 rounding may cost a hair
        w, s = _w(32, 96, seed), _skewed(96, seed + 10)
        plain, _ = cluster(w, 3, 8)
        weighted, _ = cluster(w, 3, 8, importance=s)
        assert _error(w, weighted, s) <= _error(w, plain, s) * 1.001


def test_deterministic_and_zero_weights_fall_back():
    w, s = _w(), _skewed()
    a, book_a = cluster(w, 4, 32, importance=s)
    b, book_b = cluster(w.clone(), 4, 32, importance=s.clone())
    assert torch.equal(a, b) and torch.equal(book_a.centroids, book_b.centroids)
    x = _w(2, 50)
    none = weighted_kmeans_1d(x, torch.zeros_like(x), 4)  # weights summing to 0: clustered unweighted
    ones = weighted_kmeans_1d(x, torch.ones_like(x), 4)
    assert torch.equal(none, ones) and torch.equal(none, torch.sort(none, dim=1).values)


def test_exact_zeros_stay_zero():
    w, s = _w(), _skewed()
    w[torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) < 0.5] = 0.0
    q, book = cluster(w, 3, 16, importance=s)
    assert torch.equal(q[w == 0], torch.zeros(int((w == 0).sum())))
    assert all(0.0 in row.tolist() for row in book.centroids)


def test_bad_input_is_a_one_line_user_error():
    with pytest.raises(UserError, match="kmeans_weighting=activation .* quant_method rtn; set quant_method: kmeans"):
        LayerPlan(bits=4, kmeans_weighting="activation")
    with pytest.raises(UserError, match="has no bits"):
        LayerPlan(quant_method="kmeans", kmeans_weighting="activation")
    with pytest.raises(UserError, match="kmeans_weighting='fisher' is unknown; use one of none, activation"):
        LayerPlan(bits=4, quant_method="kmeans", kmeans_weighting="fisher")
    with pytest.raises(ValidationError, match="add kmeans to method or drop kmeans_weighting"):
        QuantizeSpace(method=["rtn", "gptq"], kmeans_weighting=["none", "activation"])
    from autocompress.config import SearchConfig

    with pytest.raises(UserError, match="space.quantize: kmeans_weighting .* offers no kmeans; add kmeans"):
        SearchConfig.from_dict({"model": {"name": "x"}, "space": {"quantize": {"method": ["rtn"],
                                                                               "kmeans_weighting": ["activation"]}}})
    entry = LayerPlan(**WEIGHTED)
    assert entry.to_dict() == {"bits": 4, "quant_method": "kmeans", "kmeans_weighting": "activation"}
    assert LayerPlan.from_dict(entry.to_dict()) == entry and LayerPlan(bits=4, quant_method="kmeans").to_dict() == \
        {"bits": 4, "quant_method": "kmeans"}  # the default is not written: older plans read the same
    with pytest.raises(ValueError, match="needs the layer's input Gram matrix"):
        activation_importance(None, entry, 8)
    assert space_is_data_aware(type("S", (), {"quantize": QuantizeSpace(method=["kmeans"],
                                                                        kmeans_weighting=["activation"])})())
    assert not space_is_data_aware(type("S", (), {"quantize": QuantizeSpace(method=["kmeans"])})())


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256))
    model.eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 256, (4, 24), generator=g),
                "attention_mask": torch.ones(4, 24, dtype=torch.long)} for _ in range(3)]
    return model, inspect_model(model, "causal-lm"), batches


def _plan(info, **entry):
    return CompressionPlan({n: LayerPlan(group_size=None, **entry) for n in sorted(info.targets_by_default())})


def test_apply_on_a_llama_with_calibration(llama, tmp_path):
    model, info, batches = llama
    plan, plain_plan = _plan(info, **WEIGHTED), _plan(info, bits=4, quant_method="kmeans")
    with pytest.raises(UserError, match="kmeans_weighting activation needs calibration data"):
        apply_plan(copy.deepcopy(model), plan, None, info=info)
    weighted = apply_plan(copy.deepcopy(model), plan, Calibration(batches), info=info)
    plain = apply_plan(copy.deepcopy(model), plain_plan, None, info=info)
    assert plan_violations(weighted, plan, info) == []
    grams = Calibration(batches).input_grams(model, {n: model.get_submodule(n) for n in plan.layers})
    ours = theirs = 0.0
    for name in plan.layers:
        w, s = model.get_submodule(name).weight, grams[name].diagonal()
        ours += _error(w, weighted.get_submodule(name).weight, s)
        theirs += _error(w, plain.get_submodule(name).weight, s)
        assert _error(w, weighted.get_submodule(name).weight, s) <= \
            _error(w, plain.get_submodule(name).weight, s) * 1.001, name
    # measured: 0.93
    assert ours < 0.97 * theirs
    save_compressed(weighted, plan, info, str(tmp_path))  # the codebook format is unchanged: bit-identical
    back = load_compressed(str(tmp_path)).model.state_dict()
    for key, t in weighted.state_dict().items():
        assert torch.equal(back[key], t), key


@pytest.mark.parametrize("sequential", [False, True])
def test_the_memo_gives_bit_identical_codebooks(llama, sequential):
    model, info, batches = llama
    plan = _plan(info, **WEIGHTED)
    reference = apply_plan(copy.deepcopy(model), plan, Calibration(batches, sequential=sequential), info=info)
    memo = BaseModelMemo(model)
    for _ in range(2):  # computed, then rebuilt from the memo's indices and centroids
        again = apply_plan(copy.deepcopy(model), plan, Calibration(batches, memo=memo, sequential=sequential),
                           info=info)
        for name in plan.layers:
            assert torch.equal(again.get_submodule(name).weight, reference.get_submodule(name).weight), name
            assert torch.equal(getattr(again.get_submodule(name), GRID_ATTR).centroids,
                               getattr(reference.get_submodule(name), GRID_ATTR).centroids)
    assert (memo.hits, memo.misses) == (len(plan.layers), len(plan.layers))
    unweighted = _plan(info, bits=4, quant_method="kmeans")  # not data-aware: never through the memo
    apply_plan(copy.deepcopy(model), unweighted, Calibration(batches, memo=memo, sequential=sequential), info=info)
    assert (memo.hits, memo.misses) == (len(plan.layers), len(plan.layers))


def test_the_space_offers_the_weighting_for_kmeans_units_only():
    import optuna

    from autocompress.config_sections import SpaceSection
    from autocompress.loading import load_model
    from autocompress.spaces.config_space import ConfigSpace

    info = load_model("random:llama").info
    cs = ConfigSpace(SpaceSection.model_validate({"quantize": {"bits": [4], "method": ["rtn", "kmeans"],
                                                               "kmeans_weighting": ["none", "activation"]}}), info)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        plan = cs.sample(trial)
        study.tell(trial, 0.0)
        for e in plan.layers.values():
            seen.add((e.quant_method, e.kmeans_weighting))
        units_kmeans = {k.rsplit(".", 1)[0] for k, v in trial.params.items() if k.endswith("quant_method")
                        and v == "kmeans"}
        assert {k.rsplit(".", 1)[0] for k in trial.params if k.endswith(".kmeans_weighting")} == units_kmeans
        assert cs.plan_from_params(trial.params) == plan  # a stored trial replays
    assert seen == {("rtn", "none"), ("kmeans", "none"), ("kmeans", "activation")}
    shown = str(CompressionPlan({"a": LayerPlan(**WEIGHTED), "b": LayerPlan(bits=4, quant_method="kmeans")}))
    assert "kmeans activation" in shown.splitlines()[2] and shown.splitlines()[3].endswith("kmeans")


def test_a_search_offering_the_weighting(tmp_path):
    from autocompress.search.driver import run_search
    from tests.support import make_config, stored_trials

    config = make_config(tmp_path, space={"quantize": {"bits": [4], "method": ["kmeans"],
                                                       "kmeans_weighting": ["none", "activation"]}},
                         tracking={"uri": "none"}, budget={"n_trials": 4})
    result = run_search(config, show_progress=False)
    trials = stored_trials(config)
    assert result.counts == {"COMPLETE": 4}
    drawn = {v for t in trials for k, v in t.params.items() if k.endswith(".kmeans_weighting")}
    assert drawn == {"none", "activation"}
    assert all(0 < t.user_attrs["metrics"]["fidelity"] <= 1.0 + 1e-6 for t in trials)
