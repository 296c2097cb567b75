"""BaseModelMemo (policies/memo.py): what data-aware policies compute on the unchanged base model is kept
and reused, and a plan applied through the memo gives exactly what it gives without one."""

import copy

import torch

from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import Calibration, apply_plan
from autocompress.policies.memo import BaseModelMemo
from autocompress.policies.quantize import GRID_ATTR


def _batches(n=2):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 1000, (4, 16), generator=g),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(n)]


def _plan(lm, **entry):
    return CompressionPlan({n: LayerPlan(**entry) for n in lm.info.targets_by_default()})


def _apply(lm, plan, calibration):
    return apply_plan(copy.deepcopy(lm.model), plan, calibration, info=lm.info)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for (name, ma), mb in zip(a.named_modules(), b.modules()):
        ga, gb = getattr(ma, GRID_ATTR, None), getattr(mb, GRID_ATTR, None)
        assert (ga is None) == (gb is None), name
        if ga is not None:
            assert torch.equal(ga.scale, gb.scale) and torch.equal(ga.zero, gb.zero), name


def test_gptq_through_the_memo_is_exactly_gptq_without_it():
    lm, batches = load_model("random:bert"), _batches()
    memo = BaseModelMemo(lm.model)
    with_memo = Calibration(batches, memo=memo)
    for entry in (dict(bits=4, group_size=32, quant_method="gptq"), dict(bits=3, quant_method="gptq"),
                  dict(bits=8, group_size=32, symmetric=False, quant_method="gptq", act_bits=8)):
        plan = _plan(lm, **entry)
        reference = _apply(lm, plan, Calibration(batches))
        first, second = _apply(lm, plan, with_memo), _apply(lm, plan, with_memo)
        _same(first, reference)
        _same(second, reference)  # the second one is rebuilt from the kept integers and grids
    assert memo.misses == memo.hits == 3 * 12 and len(memo.grams) == 12  # 12 Linear layers in the blocks
    assert memo.matches(lm.model)  # the base model itself is never changed


def test_a_model_changed_by_an_earlier_stage_computes_afresh():
    lm, batches = load_model("random:bert"), _batches()
    memo = BaseModelMemo(lm.model)
    layers = lm.info.targets_by_default()
    sparse_then_gptq = CompressionPlan({n: LayerPlan(bits=4, group_size=32, quant_method="gptq", sparsity=0.5,
                                                     prune_method="wanda") for n in layers})
    reference = _apply(lm, sparse_then_gptq, Calibration(batches))
    _same(_apply(lm, sparse_then_gptq, Calibration(batches, memo=memo)), reference)
    assert memo.results == {} and len(memo.grams) == len(layers)  # Wanda's grams: taken on the base model
    wanda = CompressionPlan({n: LayerPlan(sparsity=0.5, prune_method="wanda") for n in layers})
    _same(_apply(lm, wanda, Calibration(batches, memo=memo)), _apply(lm, wanda, Calibration(batches)))


def test_matches_only_the_exact_base_model():
    lm = load_model("random:bert")
    memo = BaseModelMemo(lm.model)
    twin = copy.deepcopy(lm.model)
    assert memo.matches(twin)
    with torch.no_grad():
        twin.encoder.layer[0].output.dense.weight[0, 0] += 1e-6
    assert not memo.matches(twin)
    hooked = copy.deepcopy(lm.model)
    hooked.encoder.layer[0].output.dense.register_forward_pre_hook(lambda m, a: None)
    assert not memo.matches(hooked)
    assert not memo.matches(load_model("random:bert", seed=1).model)


def test_a_full_memo_stores_nothing_more_and_changes_nothing():
    lm, batches = load_model("random:bert"), _batches()
    memo = BaseModelMemo(lm.model, max_bytes=0)
    plan = _plan(lm, bits=4, group_size=32, quant_method="gptq")
    _same(_apply(lm, plan, Calibration(batches, memo=memo)), _apply(lm, plan, Calibration(batches)))
    assert memo.grams == {} and memo.results == {} and memo.stored_bytes == 0
