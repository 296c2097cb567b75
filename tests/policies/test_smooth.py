"""SmoothQuant smoothing (policies/smooth.py): the function is unchanged before quantization, s follows the
formula, the int8 activation error shrinks where a channel carries outliers, and GPTQ sees the smoothed input."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.modules import weight_matrix
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import ORDER, POLICIES, Calibration, apply_plan
from autocompress.policies.memo import BaseModelMemo
from autocompress.policies.quantize import QuantizePolicy, act_quant_hook
from autocompress.policies.smooth import SMOOTH_ATTR, SmoothPolicy, smooth_hook, smoothing_scales

SMOOTHED = LayerPlan(bits=8, group_size=None, act_bits=8, smooth=0.5)


def _calibration(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[3, 10:] = 0
    return Calibration([{"input_ids": torch.randint(0, 1000, (4, 16), generator=g), "attention_mask": mask}
                        for _ in range(n)])


def _ids():
    return torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(2))


def _out(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


class Toy(nn.Module):
    """One Linear fed `x` directly, so tests choose its input."""

    def __init__(self, n_in=64, n_out=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x, attention_mask=None):
        return self.fc(x)


def _outliers(n_tokens, n_in=64, seed=0):
    """Activations where channel 3 is ~50x the others (the shape SmoothQuant targets)."""
    x = torch.randn(n_tokens, n_in, generator=torch.Generator().manual_seed(seed))
    x[:, 3] *= 50
    return x


def _smooth_and_quantize(model, plan, calibration, smooth=True):
    with torch.no_grad():
        if smooth:
            SmoothPolicy().apply(model, plan, calibration)
        QuantizePolicy().apply(model, plan, calibration)
    return model


def test_registered_right_before_quantize():
    assert POLICIES.get("smooth") is SmoothPolicy
    assert ORDER.index("smooth") == ORDER.index("quantize") - 1


@pytest.mark.parametrize("spec", ["random:llama", "random:gpt2", "random:bert"])
def test_smoothing_alone_keeps_the_function(spec):
    lm = load_model(spec)
    tied = {e.tied_to for e in lm.info.embeddings.values()}  # GPT-2's lm_head shares the token table
    plan = CompressionPlan({n: SMOOTHED for n in lm.info.layers if n not in tied})
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        SmoothPolicy().apply(model, plan, _calibration())  # smoothing only: no grid, no int8 activations
    x = _ids()
    ref, out = lm.model(input_ids=x), model(input_ids=x)
    ref = ref.logits if hasattr(ref, "logits") else ref.last_hidden_state
    out = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5), (out - ref).abs().max()
    changed = 0
    for name in plan.layers:
        module = model.get_submodule(name)
        s = getattr(module, SMOOTH_ATTR)
        assert s.shape == (weight_matrix(module).shape[1],) and s.dtype == torch.float32
        assert torch.equal(s.half().float(), s) and (s > 0).all()
        assert list(module._forward_pre_hooks.values()) == [smooth_hook]
        changed += not torch.equal(weight_matrix(module), weight_matrix(lm.model.get_submodule(name)))
    assert changed == len(plan.layers)  # every weight was rescaled
    assert model.state_dict().keys() == lm.model.state_dict().keys()  # s is not a buffer


def test_recorded_s_is_the_formula():
    toy = Toy()
    x = _outliers(40)
    plan = CompressionPlan({"fc": LayerPlan(act_bits=8, smooth=0.7)})
    w0 = toy.fc.weight.detach().clone()
    with torch.no_grad():
        SmoothPolicy().apply(toy, plan, Calibration([{"x": x[:20]}, {"x": x[20:]}]))
    want = (x.abs().amax(0) ** 0.7 / w0.abs().amax(0) ** 0.3).half().float()
    assert torch.equal(toy.fc._autocompress_smooth, want)
    assert torch.equal(smoothing_scales(x.abs().amax(0), w0, 0.7), want)
    assert torch.allclose(toy.fc.weight, w0 * want, rtol=0, atol=0)
    assert torch.allclose(toy(x), nn.functional.linear(x, w0, toy.fc.bias), rtol=1e-5, atol=1e-4)


def test_channels_never_activated_or_pruned_get_one():
    x = _outliers(16)
    x[:, 5] = 0  # never activated
    w = torch.randn(8, 64)
    w[:, 7] = 0  # a pruned column
    s = smoothing_scales(x.abs().amax(0), w, 0.5)
    assert s[5] == 1 and s[7] == 1 and torch.isfinite(s).all()
    huge = smoothing_scales(torch.full((64,), 1e30), w, 1.0)
    assert huge.max() <= 2 ** 14 and torch.isfinite(huge).all()  # clamped, float16-exact


def test_padded_tokens_are_left_out_of_the_range():
    toy = Toy()
    calib = Calibration([{"x": torch.ones(1, 4, 64), "attention_mask": torch.tensor([[1, 1, 1, 0]])}])
    calib.batches[0]["x"][0, 3] = 1000.0  # the padded position carries a huge value
    absmax = calib.input_absmax(toy, {"fc": toy.fc})["fc"]
    assert torch.equal(absmax, torch.ones(64))


def test_act_quant_error_shrinks_on_an_outlier_channel():
    x_cal, x_test = _outliers(256, seed=0), _outliers(256, seed=1)
    ref = Toy()(x_test).detach()
    plan = CompressionPlan({"fc": SMOOTHED})
    errors = {}
    for smooth in (False, True):
        model = _smooth_and_quantize(Toy(), plan, Calibration([{"x": x_cal}]), smooth=smooth)
        with torch.no_grad():
            errors[smooth] = ((model(x_test) - ref).norm() / ref.norm()).item()
    assert errors[True] < errors[False] / 2, errors


def test_hook_order_and_gptq_sees_the_smoothed_input():
    toy = Toy()
    x = _outliers(128)
    calib = Calibration([{"x": x}])
    gram0 = calib.input_grams(toy, {"fc": toy.fc})["fc"]
    plan = CompressionPlan({"fc": LayerPlan(bits=4, group_size=16, quant_method="gptq", act_bits=8, smooth=0.5)})
    with torch.no_grad():
        SmoothPolicy().apply(toy, plan, calib)
    s = toy.fc._autocompress_smooth
    gram = calib.input_grams(toy, {"fc": toy.fc})["fc"]  # what the quantize policy's GPTQ gathers next
    assert torch.allclose(gram, gram0 / s[:, None] / s[None, :], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        QuantizePolicy().apply(toy, plan, calib)
    assert list(toy.fc._forward_pre_hooks.values()) == [smooth_hook, act_quant_hook]  # int8 sees x / s
    assert pickle.loads(pickle.dumps(toy))(x).shape == (128, 32)


def test_refusals():
    with pytest.raises(UserError, match="smooth.*act_bits 8"):
        LayerPlan(smooth=0.5)
    with pytest.raises(UserError, match="smooth.*act_bits 8"):
        LayerPlan(bits=8, smooth=0.5)
    with pytest.raises(UserError, match="smooth.*rank"):
        LayerPlan(act_bits=8, smooth=0.5, rank=4)
    for bad in (0, 0.0, 1.5, -0.2, True, "0.5", float("nan")):
        with pytest.raises(UserError, match="smooth"):
            LayerPlan(act_bits=8, smooth=bad)
    assert LayerPlan(act_bits=8, smooth=1).smooth == 1.0
    lm = load_model("random:llama")
    plan = CompressionPlan({"model.layers.0.self_attn.q_proj": SMOOTHED})
    with pytest.raises(UserError, match="q_proj.*smooth.*calibration"):
        apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    with pytest.raises(UserError, match="embedding.*smooth"):
        apply_plan(copy.deepcopy(lm.model), CompressionPlan({"model.embed_tokens": LayerPlan(act_bits=8, smooth=0.5)}),
                   _calibration(), info=lm.info)
    gpt2 = load_model("random:gpt2")
    with pytest.raises(UserError, match="lm_head.*smooth.*transformer.wte"):
        apply_plan(gpt2.model, CompressionPlan({"lm_head": SMOOTHED}), _calibration(), info=gpt2.info)


def test_smoothed_w8a8_is_closer_to_the_original_than_plain_w8a8():
    lm = load_model("random:llama")
    with torch.no_grad():  # give every block's inputs an outlier channel, as trained LLMs have
        for layer in lm.model.model.layers:
            layer.input_layernorm.weight[7] = 40.0
            layer.post_attention_layernorm.weight[11] = 40.0
    x, calib = _ids(), _calibration(4)
    ref = _out(lm.model, x)
    errs = {}
    for smooth in (None, 0.5):
        plan = CompressionPlan({n: LayerPlan(bits=8, group_size=None, act_bits=8, smooth=smooth)
                                for n in lm.info.layers})
        out = _out(apply_plan(copy.deepcopy(lm.model), plan, calib, info=lm.info), x)
        errs[smooth] = ((out - ref).norm() / ref.norm()).item()
    assert errs[0.5] < errs[None], errs


def test_ranges_come_from_the_memo_on_a_pristine_model():
    lm = load_model("random:llama")
    batches = _calibration().batches
    memo = BaseModelMemo(lm.model)
    plan = CompressionPlan({n: SMOOTHED for n in lm.info.layers})
    x = _ids()
    with_memo = [_out(apply_plan(copy.deepcopy(lm.model), plan, Calibration(batches, memo=memo), info=lm.info), x)
                 for _ in range(2)]
    without = _out(apply_plan(copy.deepcopy(lm.model), plan, Calibration(batches), info=lm.info), x)
    assert set(memo.absmax) == set(lm.info.layers)
    assert torch.equal(with_memo[0], without) and torch.equal(with_memo[1], without)
    assert memo.matches(lm.model)
