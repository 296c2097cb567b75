import copy

import pytest
import torch

from autocompress.distill_spec import DistillConfig
from autocompress.errors import UserError
from autocompress.evaluators.latency._base import layer_format
from autocompress.evaluators.size import plan_size
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from autocompress.policies.kmeans import (
    Codebook, cluster, codebook_indices, codebook_values, codebook_violation, kmeans_1d, num_books,
)
from autocompress.policies.quantize import GRID_ATTR, QUANTIZERS, quantize_rtn
from autocompress.policies.verify import plan_violations
from autocompress.validation import validate_plan


def _w(rows=48, cols=40, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_kmeans_1d_finds_separated_clusters_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, generator=g) * 0.01 + c for c in (-3.0, 0.5, 2.0)])
    c = kmeans_1d(x[torch.randperm(900, generator=g)], 3)
    assert torch.allclose(c, torch.tensor([-3.0, 0.5, 2.0]), atol=0.01)
    assert torch.equal(c, kmeans_1d(x, 3)) and torch.equal(c, torch.sort(c).values)
    assert torch.equal(kmeans_1d(torch.empty(0), 4), torch.zeros(4))
    rows = torch.stack([x[:450], x[450:]])
    both = kmeans_1d(rows, 2, pin_zero=torch.tensor([False, True]))
    assert torch.equal(both[0], kmeans_1d(x[:450], 2)) and 0.0 in both[1].tolist()


@pytest.mark.parametrize("bits,group_size", [(2, None), (4, None), (3, 16), (8, None)])
def test_cluster_uses_2_to_the_bits_fp16_values_per_codebook(bits, group_size):
    w = _w()
    q, book = cluster(w, bits, group_size)
    assert book.centroids.shape == (num_books(48, group_size), 2 ** bits)
    assert torch.equal(book.centroids.half().float(), book.centroids)
    for b, rows in enumerate(book.row_groups(48)):
        assert set(q[rows].unique().tolist()) <= set(book.centroids[b].tolist())
    assert torch.equal(codebook_values(codebook_indices(q, book), book), q)
    assert torch.equal(cluster(w, bits, group_size)[0], q)  # deterministic
    assert codebook_violation(q, LayerPlan(bits=bits, group_size=group_size, quant_method="kmeans"), book) is None


def test_kmeans_beats_the_uniform_grid_at_the_same_bits():
    w = _w(64, 256)  # bell-shaped, as trained weights are: a uniform grid wastes levels on the tails
    km, _ = cluster(w, 3, None)  # one codebook, against one scale and zero per row
    rtn = quantize_rtn(w, 3, None, symmetric=False)
    assert (km - w).pow(2).mean() < 0.7 * (rtn - w).pow(2).mean()


def test_pruned_zeros_stay_zero():
    w = _w()
    w[w.abs() < 0.7] = 0
    q, book = cluster(w, 2, None)
    assert bool((q[w == 0] == 0).all()) and 0.0 in book.centroids[0].tolist()
    assert not bool(torch.signbit(book.centroids).logical_and(book.centroids == 0).any())  # no -0.0
    assert int((q != 0).sum()) > 0.9 * int((w != 0).sum())


def test_violations_are_named():
    w = _w()
    q, book = cluster(w, 4, None)
    entry = LayerPlan(bits=4, group_size=None, quant_method="kmeans")
    assert "no recorded codebook" in codebook_violation(q, entry, None)
    assert "planned" in codebook_violation(q, LayerPlan(bits=3, group_size=None, quant_method="kmeans"), book)
    assert "off the recorded 4-bit codebook" in codebook_violation(q + 1e-3, entry, book)
    bad = Codebook(4, None, book.centroids + 1e-5)
    assert "float16" in codebook_violation(q, entry, bad)


def test_plan_fields_and_bad_input():
    assert "kmeans" in QUANTIZERS
    p = LayerPlan(bits=4, symmetric=False, quant_method="kmeans")
    assert p.symmetric is True  # a codebook has no symmetry
    assert CompressionPlan.from_json(CompressionPlan({"a": p}).to_json()) == CompressionPlan({"a": p})
    for bits in (1, 9):
        with pytest.raises(UserError, match=rf"bits={bits} is out of range; use an integer 2..8"):
            LayerPlan(bits=bits, quant_method="kmeans")
    with pytest.raises(UserError, match="kmeans with gguf_type Q4_0.*drop one"):
        LayerPlan(gguf_type="Q4_0", quant_method="kmeans")
    with pytest.raises(UserError, match="quant_method kmeans, and distillation.*drop distill"):
        CompressionPlan({"a": p}, distill=DistillConfig(steps=10))


def test_embedding_tables_refuse_a_codebook():
    bert = load_model("random:bert").info
    with pytest.raises(UserError, match="'embeddings.word_embeddings' is an embedding table; quant_method kmeans"):
        validate_plan(CompressionPlan({"embeddings.word_embeddings": LayerPlan(bits=4, quant_method="kmeans")}),
                      bert)
    gpt2 = load_model("random:gpt2").info  # a tied table is refused as before, naming the Linear to plan instead
    with pytest.raises(UserError, match="tied to the Linear 'lm_head'.*quantize 'lm_head' instead"):
        validate_plan(CompressionPlan({"transformer.wte": LayerPlan(bits=4, quant_method="kmeans")}), gpt2)


def test_size_counts_indices_and_fp16_codebooks():
    info = load_model("random:bert").info
    name = "encoder.layer.0.intermediate.dense"
    rows, cols = info.layers[name].out_features, info.layers[name].in_features
    bias = rows * 4
    for gs, books in ((None, 1), (16, -(-rows // 16))):
        size = plan_size(CompressionPlan({name: LayerPlan(bits=3, group_size=gs, quant_method="kmeans")}), info)
        assert size.per_layer[name] == -(-rows * cols * 3 // 8) + books * 8 * 2 + bias


def test_policy_clusters_every_planned_layer_and_verifies():
    lm = load_model("random:gpt2")  # Conv1D weights, a tied head, structured pruning, low rank
    plan = CompressionPlan({"transformer.h.0.attn.c_attn": LayerPlan(bits=4, group_size=None, quant_method="kmeans"),
                            "transformer.h.0.mlp": LayerPlan(sparsity=0.25, pattern="structured"),
                            "transformer.h.0.mlp.c_proj": LayerPlan(bits=3, quant_method="kmeans", sparsity=0.5),
                            "transformer.h.1.mlp.c_fc": LayerPlan(bits=4, quant_method="kmeans", rank=0.25),
                            "lm_head": LayerPlan(bits=2, group_size=64, quant_method="kmeans")})
    model = apply_plan(copy.deepcopy(lm.model), plan, None, info=lm.info)
    assert plan_violations(model, plan, lm.info) == []
    head = model.get_submodule("lm_head")
    assert isinstance(getattr(head, GRID_ATTR), Codebook)
    assert head.weight is model.get_submodule("transformer.wte").weight


def test_latency_runs_a_codebook_dense():
    assert layer_format(LayerPlan(bits=4, quant_method="kmeans")) == ("dense", None)
    assert layer_format(LayerPlan(bits=4)) == ("w4", 128)
