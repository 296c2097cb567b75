"""The plan grid's "block dropped" column: every layer row of a dropped block, and nothing else; both heat maps
draw it; a space with `depth` shows the column even for a plan that drops nothing."""

from __future__ import annotations

from autocompress.config import SpaceSection
from autocompress.loading import meta_inventory
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.report.plan_grid import plan_grid


def test_dropped_block_rows_and_only_those():
    info = meta_inventory("random:llama")
    grid = plan_grid(CompressionPlan({"model.layers.0.mlp.up_proj": LayerPlan(bits=4)}, drop_blocks=[1]), info)
    assert [c.key for c in grid.columns] == ["bits", "dropped"]
    dropped = {row for row, v in zip(grid.rows, grid.values) if v[1] is not None}
    assert dropped == {n for n, layer in info.layers.items() if layer.block == 1} and dropped
    texts = {row: t[1] for row, t in zip(grid.rows, grid.texts)}
    assert texts["model.layers.1.mlp.up_proj"] == "block 1" and texts["model.layers.0.mlp.up_proj"] == "-"
    space = SpaceSection.model_validate({"quantize": {"bits": [4]}, "depth": {"max_drop": 1}})
    assert [c.key for c in plan_grid(CompressionPlan({}), info, space).columns] == ["bits", "dropped"]


def test_both_heat_maps_draw_the_dropped_column():
    from autocompress.report.figures import plan_figure
    from autocompress.report.interactive import plan_heatmap

    info = meta_inventory("random:bert")
    grid = plan_grid(CompressionPlan({"encoder.layer.0.intermediate.dense": LayerPlan(bits=4)}, drop_blocks=[1]),
                     info)
    figure = plan_figure(grid, "a plan that drops a block")
    assert [a.get_title() for a in figure.axes if a.get_title()] == ["weight bits", "block dropped"]
    assert plan_heatmap(grid) is not None
