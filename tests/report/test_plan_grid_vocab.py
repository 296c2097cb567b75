"""The plan grid's vocabulary column: the share kept on the token table's and the LM head's rows; both heat
maps draw it."""

from __future__ import annotations

from autocompress.config import SpaceSection
from autocompress.loading import meta_inventory
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.report.plan_grid import plan_grid
from autocompress.vocab.plan import VocabPlan


def test_vocab_share_on_the_table_and_head_rows():
    info = meta_inventory("random:llama")
    grid = plan_grid(CompressionPlan({}, vocab=VocabPlan(keep=0.25)), info)
    assert [c.key for c in grid.columns] == ["vocab"]
    cells = {row: (v[0], t[0]) for row, v, t in zip(grid.rows, grid.values, grid.texts)}
    assert cells["model.embed_tokens"] == cells["lm_head"] == (7630 / 30522, "25%")
    assert cells["model.layers.0.self_attn.q_proj"] == (None, "-")
    space = SpaceSection.model_validate({"quantize": {"bits": [4]}, "vocab": {"keep": [1.0, 0.5]}})
    assert [c.key for c in plan_grid(CompressionPlan({}), info, space).columns] == ["bits", "vocab"]


def test_both_heat_maps_draw_the_vocab_column():
    from autocompress.report.figures import plan_figure
    from autocompress.report.interactive import plan_heatmap

    info = meta_inventory("random:bert")
    grid = plan_grid(CompressionPlan({"encoder.layer.0.intermediate.dense": LayerPlan(bits=4)},
                                     vocab=VocabPlan(keep=0.5)), info)
    assert [c.key for c in grid.columns] == ["bits", "vocab"] and "embeddings.word_embeddings" in grid.rows
    figure = plan_figure(grid, "a plan with a pruned vocabulary")
    assert [a.get_title() for a in figure.axes if a.get_title()] == ["weight bits", "vocab kept"]
    assert plan_heatmap(grid) is not None
