"""export/gguf_blocks.py: a weight's ggml blocks are ggml's own bytes, integer grids land exactly in the
smallest Q*_0 type that holds them, and what no type holds is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autocompress.export.gguf_blocks import dense_tensor, int_grid_type, quantized_tensor
from autocompress.plan import GGUF_TYPES, LayerPlan
from autocompress.policies import ggml
from autocompress.policies.quantize import QuantGrid, quant_params, quantize_rtn


def _w(seed=0, rows=24, cols=192):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("gguf_type", list(GGUF_TYPES))
def test_blocks_are_ggml_bytes(gguf_type):
    import gguf

    w = _w()
    w[1, :32] = 0
    fake, grid = ggml.quantize_rtn_ggml(w, gguf_type)
    qtype, data, values = quantized_tensor(fake, grid, LayerPlan(gguf_type=gguf_type))
    assert qtype == gguf_type
    assert np.array_equal(data, gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[gguf_type]))
    assert np.array_equal(values, fake.numpy())


@pytest.mark.parametrize("bits, group_size, symmetric, expected", [
    (4, 32, True, "Q4_0"), (3, None, True, "Q4_0"), (2, 64, True, "Q4_0"), (5, 32, True, "Q5_0"),
    (8, 128, True, "Q8_0"), (6, None, True, "Q8_0"), (4, 64, False, "Q5_0"), (3, 32, False, "Q5_0"),
    (7, None, False, "Q8_0"),
])
def test_integer_grids_land_exactly_in_the_smallest_type(bits, group_size, symmetric, expected):
    entry = LayerPlan(bits=bits, group_size=group_size, symmetric=symmetric)
    assert int_grid_type(entry) == expected
    w = _w(bits)
    fake, scale, zero = quantize_rtn(w, bits, group_size, symmetric, return_params=True)
    qtype, _, values = quantized_tensor(fake, QuantGrid(bits, group_size, symmetric, scale, zero), entry)
    assert qtype == expected and np.array_equal(values, fake.numpy())


def test_what_no_type_holds_is_refused():
    assert int_grid_type(LayerPlan(bits=8, group_size=32, symmetric=False)) is None
    w = _w()
    fake, scale, zero = quantize_rtn(w, 8, 32, False, return_params=True)
    with pytest.raises(ValueError, match="8-bit asymmetric"):
        quantized_tensor(fake, QuantGrid(8, 32, False, scale, zero), LayerPlan(bits=8, group_size=32,
                                                                                symmetric=False))
    fake, scale, zero = quantize_rtn(w, 4, 16, True, return_params=True)
    with pytest.raises(ValueError, match="whole blocks"):
        quantized_tensor(fake, QuantGrid(4, 16, True, scale, zero), LayerPlan(bits=4, group_size=16))
    off = fake.clone()
    off[0, 0] += 1e-3  # not on the recorded grid: the bytes would not give it back
    scale, zero = quant_params(w, 4, 32, True)
    with pytest.raises(ValueError, match="exactly"):
        quantized_tensor(off, QuantGrid(4, 32, True, scale, zero), LayerPlan(bits=4, group_size=32))


def test_dense_tensors_keep_their_float_type():
    w = _w()
    assert dense_tensor(w)[0] == "F32" and np.array_equal(dense_tensor(w)[1], w.numpy())
    assert dense_tensor(w.half())[0] == "F16"
    kind, raw = dense_tensor(w.bfloat16())
    assert kind == "BF16" and raw.dtype == np.uint8 and raw.shape == (24, 192 * 2)
    assert dense_tensor(torch.ones(8, dtype=torch.float16))[0] == "F32"  # norms: F32, as llama.cpp wants
