import pytest
import torch

from autocompress.evaluators.size import matrix_bytes
from autocompress.export.matrix import fill_mask, pack_matrix, unpack_int, unpack_matrix
from autocompress.plan import LayerPlan
from autocompress.policies.quantize import QuantGrid, qrange, quantize_rtn
from autocompress.policies.sparsify import prune_mask


def _compress(w, entry):
    """What the policies do to one matrix: prune, then fake-quantize; returns (weight, grid or None)."""
    if entry.prunes:
        w = w.masked_fill(~prune_mask(w.abs(), entry.sparsity, entry.n_m), 0.0)
    if entry.bits is None:
        return w, None
    q, scale, zero = quantize_rtn(w, entry.bits, entry.group_size, entry.symmetric, return_params=True)
    return q, QuantGrid(entry.bits, entry.group_size, entry.symmetric, scale, zero)


CASES = {
    "4-bit g32 sym": LayerPlan(bits=4, group_size=32),
    "3-bit per-channel asym": LayerPlan(bits=3, group_size=None, symmetric=False),
    "5-bit g24 (short last group)": LayerPlan(bits=5, group_size=24),
    "8-bit per-channel": LayerPlan(bits=8, group_size=None),
    "2-bit g16 asym": LayerPlan(bits=2, group_size=16, symmetric=False),
    "50% unstructured": LayerPlan(sparsity=0.5),
    "70% unstructured 4-bit": LayerPlan(sparsity=0.7, bits=4, group_size=32),
    "2:4": LayerPlan(pattern="2:4"),
    "2:4 4-bit asym": LayerPlan(pattern="2:4", bits=4, group_size=32, symmetric=False),
    "1:4 3-bit": LayerPlan(pattern="1:4", bits=3, group_size=None),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", [(24, 96), (9, 70)])  # 70 = 17 groups of 4 + a tail of 2
def test_round_trip_exact_and_bytes_as_predicted(case, shape):
    entry = CASES[case]
    w, grid = _compress(torch.randn(*shape, generator=torch.Generator().manual_seed(3)), entry)
    tensors, meta = pack_matrix(w, entry, grid, 4)
    nbytes, layout = matrix_bytes(*shape, entry, 4)
    assert meta["layout"] == layout and meta["bytes"] == nbytes
    if tensors:
        assert sum(t.numel() * t.element_size() for t in tensors.values()) == nbytes
    else:  # dense and not quantized: the caller stores the parameter itself
        assert layout == "dense" and entry.bits is None
        return
    assert torch.equal(unpack_matrix(tensors, meta, torch.float32), w)
    if entry.bits is not None:
        assert tensors["scales"].dtype == torch.float16 and ("zeros" in tensors) == (not entry.symmetric)
        q, g = unpack_int(tensors, meta)
        qmin, qmax = qrange(entry.bits, entry.symmetric)
        assert q.min() >= qmin and q.max() <= qmax
        assert torch.equal(g.scale, grid.scale) and torch.equal(g.zero, grid.zero)


def test_quantization_zeros_fill_the_mask():
    entry = LayerPlan(sparsity=0.5, bits=4, group_size=None, symmetric=True)
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    w[:, 0] = 100.0  # an outlier per row: the other kept weights round to 0 on its 4-bit grid
    w, grid = _compress(w, entry)
    assert ((w != 0).sum(1) < 16).all()
    tensors, meta = pack_matrix(w, entry, grid, 4)
    assert meta["layout"] == "bitmask" and meta["kept"] == 6 * 16
    assert torch.equal(unpack_matrix(tensors, meta, torch.float32), w)


def test_fill_mask():
    nz = torch.tensor([[True, False, False, True], [False, False, False, False]])
    assert fill_mask(nz, 3).tolist() == [[True, True, False, True], [True, True, True, False]]
    with pytest.raises(ValueError, match="nonzero"):
        fill_mask(nz, 1)


def test_refuses_what_the_plan_does_not_describe():
    entry = LayerPlan(bits=4, group_size=32)
    w, grid = _compress(torch.randn(8, 64), entry)
    with pytest.raises(ValueError, match="no recorded grid"):
        pack_matrix(w, entry, None, 4)
    with pytest.raises(ValueError, match="not on the recorded grid"):
        pack_matrix(w + 1e-3, entry, grid, 4)
    with pytest.raises(ValueError, match="does not match"):
        pack_matrix(w, LayerPlan(bits=4, group_size=16), grid, 4)
    with pytest.raises(ValueError, match="nonzero"):  # 50% planned, nothing pruned
        pack_matrix(torch.randn(8, 64), LayerPlan(sparsity=0.5), None, 4)
