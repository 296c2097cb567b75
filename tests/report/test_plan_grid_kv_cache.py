"""The plan grid's KV-cache column: on the k/v rows of each block, at that block's bits; absent otherwise."""

from __future__ import annotations

from autocompress.config import SpaceSection
from autocompress.kvcache.plan import KVCachePlan
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.report.plan_grid import plan_grid


def test_kv_bits_on_the_cached_projections():
    info = load_model("random:llama").info
    grid = plan_grid(CompressionPlan({}, kv_cache=KVCachePlan(bits=4, layers={1: 16})), info)
    assert [c.key for c in grid.columns] == ["kv_bits"]
    cells = {row: (v[0], t[0]) for row, v, t in zip(grid.rows, grid.values, grid.texts)}
    assert cells["model.layers.0.self_attn.k_proj"] == (4.0, "kv 4") == cells["model.layers.0.self_attn.v_proj"]
    assert cells["model.layers.1.self_attn.v_proj"] == (None, "16")
    assert cells["model.layers.0.self_attn.q_proj"] == (None, "-")
    assert [c.key for c in plan_grid(CompressionPlan({"model.layers.0.mlp.up_proj": LayerPlan(bits=4)}),
                                     info).columns] == ["bits"]
    space = SpaceSection.model_validate({"quantize": {"bits": [4]}, "kv_cache": {"bits": [16, 8]}})
    assert [c.key for c in plan_grid(CompressionPlan({}), info, space).columns] == ["bits", "kv_bits"]


def test_both_heat_maps_draw_the_kv_column():
    from autocompress.report.figures import plan_figure
    from autocompress.report.interactive import plan_heatmap

    info = load_model("random:llama").info
    grid = plan_grid(CompressionPlan({"model.layers.0.mlp.up_proj": LayerPlan(bits=4)},
                                     kv_cache=KVCachePlan(bits=2, layers={0: 8})), info)
    assert [c.key for c in grid.columns] == ["bits", "kv_bits"]
    figure = plan_figure(grid, "a plan with a quantized cache")
    assert [a.get_title() for a in figure.axes if a.get_title()] == ["weight bits", "KV-cache bits"]
    assert plan_heatmap(grid) is not None
