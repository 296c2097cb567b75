"""PackedEmbedding: a quantized table held packed gives exactly the dequantized rows."""

from __future__ import annotations

import pytest
import torch

from autocompress.export import load_compressed
from autocompress.export.embedding import PackedEmbedding
from autocompress.policies.quantize import QuantGrid, dequantize, quant_params, quantize_int
from tests.export.conftest import ids


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 32, True), (3, 16, False), (8, None, False),
                                                       (5, 64, True), (2, 7, False)])
def test_lookup_equals_the_dequantized_rows(bits, group_size, symmetric):
    table = torch.randn(50, 45, generator=torch.Generator().manual_seed(bits))  # odd dim: a padded nibble
    scale, zero = quant_params(table, bits, group_size, symmetric)
    q = quantize_int(table, scale, zero, bits, group_size, symmetric)
    packed = PackedEmbedding(q, QuantGrid(bits, group_size, symmetric, scale, zero))
    x = torch.tensor([[0, 49, 7], [7, 3, 3]])
    want = dequantize(q, scale, zero, group_size)[x]
    assert torch.equal(packed(x), want)
    per_row = 23 if bits <= 4 else 45  # two 4-bit values per byte
    assert packed.codes.shape == (50, per_row) and packed.codes.dtype == torch.uint8
    assert (packed.zeros is None) == symmetric


def test_loaded_model_runs_the_packed_tables_exactly(exported):
    e = exported["random:bert"]
    plain, fast = load_compressed(e.path), load_compressed(e.path, kernels=True)
    word = fast.model.get_submodule("embeddings.word_embeddings")
    assert isinstance(word, PackedEmbedding) and word.codes.numel() == 30522 * 32  # 4-bit: 64 values in 32 B
    x = ids()
    with torch.no_grad():
        want = plain.model.embeddings.word_embeddings(x)
        assert torch.equal(word(x), want)
        assert torch.equal(fast.model.embeddings.position_embeddings(torch.arange(12)),
                           plain.model.embeddings.position_embeddings(torch.arange(12)))
