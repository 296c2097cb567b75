import copy

import pytest
import torch

from autocompress.evaluators.size import plan_size
from autocompress.export.packed import pack_model, tied_aliases, unpack_state_dict
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from tests.export.conftest import PLANS


@pytest.mark.parametrize("spec", list(PLANS))
def test_pack_unpack_is_the_state_dict(exported, spec):
    e = exported[spec]
    packed = pack_model(e.model, e.plan, e.loaded.info)
    state = e.model.state_dict()
    back = unpack_state_dict(packed)
    assert set(back) == set(state)
    for key, t in state.items():
        assert back[key].dtype == t.dtype and torch.equal(back[key], t), key
    size = plan_size(e.plan, e.loaded.info)
    assert packed.tensor_bytes == size.total_bytes
    for name, rec in packed.layers.items():
        assert (rec["bytes"], rec["layout"]) == (size.per_layer[name], size.formats[name]), name


def test_tied_weight_stored_once_under_the_linear():
    lm = load_model("random:gpt2")
    packed = pack_model(lm.model, CompressionPlan({}), lm.info)
    assert packed.tied == {"transformer.wte.weight": "lm_head.weight"}
    assert "transformer.wte.weight" not in packed.tensors and "lm_head.weight" in packed.tensors
    assert tied_aliases(load_model("random:llama").model, set()) == {}


def test_refuses_a_model_that_does_not_realize_its_plan():
    lm = load_model("random:bert")
    name = "encoder.layer.0.attention.self.query"
    plan = CompressionPlan({name: LayerPlan(bits=4, group_size=32)})
    with pytest.raises(ValueError, match="no recorded grid"):
        pack_model(lm.model, plan, lm.info)  # the plan was never applied
    model = apply_plan(copy.deepcopy(lm.model), plan, info=lm.info)
    with torch.no_grad():
        model.get_submodule(name).weight.add_(0.01)  # fine-tuned after quantization
    with pytest.raises(ValueError, match="not on the recorded grid"):
        pack_model(model, plan, lm.info)
    with pytest.raises(ValueError, match="bytes per value"):
        pack_model(copy.deepcopy(lm.model).half(), CompressionPlan({}), lm.info)
