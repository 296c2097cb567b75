"""The figures as matplotlib objects: panels, labels with units, markers, bounds, fonts; the plan grid."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from matplotlib.text import Text

from autocompress.config import ModelSection, TargetSection
from autocompress.errors import UserError
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.report.figures import pareto_figure, plan_figure
from autocompress.report.inventory import model_inventory
from autocompress.report.labels import axis_label, fmt, natural_key
from autocompress.report.plan_grid import plan_grid
from autocompress.report.sensitivity import load_sensitivity, sensitivity_figure
from autocompress.report.study_view import StudyView, study_view
from autocompress.search.rundir.reader import RunDir
from autocompress.search.rundir.trial_result import TrialResult


def visible_texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_three_objectives_three_panels_with_units(study3):
    view = study_view(RunDir.open(study3))
    fig = pareto_figure(view)
    axes = panels(fig)
    assert len(axes) == 3
    latency = "latency (ms, predicted, cpu-local, batch 1, seq 128)"
    fidelity = "fidelity (cosine to the original, 1 = same)"
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in axes] == [
        (fidelity, latency), (fidelity, "packed size (MB)"), (latency, "packed size (MB)")]
    texts = visible_texts(fig)
    assert min(t.get_fontsize() for t in texts) >= 9
    shown = {t.get_text() for t in texts}
    for b in view.baselines:  # every baseline is labelled by name in every panel
        assert sum(t.get_text().startswith(b.baseline) for t in texts) == 3
    assert f"picked: trial {view.picked.number}" in shown
    assert any(s.startswith("study three: 10 trials") and "pruned" in s for s in shown)


def test_constraint_bound_and_infeasible_markers(study2):
    view = study_view(RunDir.open(study2))
    assert any(not p.feasible for p in view.points)
    fig = pareto_figure(view)
    (ax,) = panels(fig)
    bound_lines = [ln for ln in ax.lines if list(ln.get_xdata()) == [0.9995, 0.9995]]
    assert len(bound_lines) == 1 and bound_lines[0].get_linestyle() == "--"
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"feasible Pareto front", "infeasible (breaks a constraint)", "uniform baseline",
            "constraint bound"} <= legend


def synthetic_view(objectives, n=6) -> StudyView:
    metrics = [m for _, m in objectives]
    points = [TrialResult(number=i, values={m: 1.0 + i * (k + 1) * 0.1 for k, m in enumerate(metrics)}, metrics={},
                          plan_path=f"plans/trial-{i:04d}.json", plan_summary="bits 4x6", feasible=True, front=i < 3,
                          baseline="quantize bits=4" if i == 0 else None)
              for i in range(n)]
    return StudyView("synthetic", list(objectives), [], None, points, {"COMPLETE": n}, points[0], "x")


def test_one_and_four_objectives_lay_out():
    one = pareto_figure(synthetic_view([("maximize", "accuracy")]))
    assert [ax.get_xlabel() for ax in panels(one)] == ["trial number"]
    four = pareto_figure(synthetic_view([("maximize", "accuracy"), ("minimize", "size_mb"),
                                         ("minimize", "size_ratio"), ("minimize", "nll")]))
    assert len(panels(four)) == 6  # every pair
    seeded = synthetic_view([("maximize", "accuracy"), ("minimize", "size_mb")])
    seeded.points[0] = replace(seeded.points[0], baseline="sensitivity drop<=0.01")
    legend = [t.get_text() for t in pareto_figure(seeded).legends[0].get_texts()]
    assert "baseline or seeded plan" in legend


def test_no_feasible_trial_still_draws():
    view = synthetic_view([("maximize", "fidelity"), ("minimize", "size_mb")])
    view.points = [replace(p, feasible=False, front=False) for p in view.points]
    view.picked, view.constraints = None, [("fidelity", ">=", 5.0)]
    fig = pareto_figure(view)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["infeasible (breaks a constraint)", "uniform baseline"]
    assert "6 complete but infeasible, 0 on the feasible Pareto front" in fig.get_suptitle().replace("\n", " ")


def test_plan_grid_rows_columns_and_rank_fraction():
    info = model_inventory(ModelSection(name="random:bert"))
    assert info is not None and info.layers  # built from the config on the meta device
    plan = CompressionPlan({"encoder.layer.1.output.dense": LayerPlan(rank=16),
                            "encoder.layer.0.intermediate": LayerPlan(sparsity=0.5, pattern="structured"),
                            "encoder.layer.0.attention.self.query": LayerPlan(bits=4, group_size=None, act_bits=8),
                            "encoder.layer.1.intermediate.dense": LayerPlan(pattern="2:4")})
    grid = plan_grid(plan, info)
    assert [c.key for c in grid.columns] == ["bits", "act_bits", "sparsity", "rank", "units"]
    assert len(grid) == 12 + 4  # 12 Linear layers in the blocks + 2 attention + 2 FFN structures
    assert grid.rows == sorted(grid.rows, key=natural_key)
    row = {name: dict(zip([c.key for c in grid.columns], zip(v, t)))
           for name, v, t in zip(grid.rows, grid.values, grid.texts)}
    assert row["encoder.layer.1.output.dense"]["rank"] == (16 / 64, "r16 25%")  # 64 = min(in 256, out 64)
    assert row["encoder.layer.0.intermediate [neurons]"]["units"] == (0.5, "128/256")
    assert row["encoder.layer.0.attention.self.query"]["bits"] == (4.0, "4 ch")
    assert row["encoder.layer.0.attention.self.query"]["act_bits"] == (8.0, "int8")
    assert row["encoder.layer.1.intermediate.dense"]["sparsity"] == (0.5, "2:4")
    assert all(cell == (None, "-") for cell in row["encoder.layer.0.output.dense"].values())
    bare = plan_grid(plan)  # without the inventory: the plan's own keys, an absolute rank stays absolute
    assert len(bare) == 4 and dict(zip([c.key for c in bare.columns], bare.texts[-1]))["rank"] == "r16"


def test_plan_figure_sizes_to_36_layers():
    info = model_inventory(ModelSection(name="all-MiniLM-L6-v2"))
    if info is None:
        pytest.skip("the all-MiniLM-L6-v2 package is not installed")
    layers = info.targets_by_default()
    plan = CompressionPlan({name: LayerPlan(bits=4 if i % 2 else 8) for i, name in enumerate(layers)})
    grid = plan_grid(plan, info)
    assert len(grid) == 36
    fig = plan_figure(grid, "36 layers")
    heat = fig.axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == grid.rows
    assert fig.get_size_inches()[1] >= 36 * 0.24
    assert min(t.get_fontsize() for t in visible_texts(fig)) >= 9


def test_labels_and_formatting():
    measured = TargetSection(profile="cpu-local", latency_model="measured", batch=4, seq_len=64, mode="decode")
    assert axis_label("latency_ms", measured) == "latency (ms, measured, cpu-local, batch 4, seq 64, decode)"
    assert axis_label("size_mb") == "packed size (MB)"
    assert fmt("fidelity", 0.99999994) == "0.99999994" and fmt("fidelity", 1.0) == "1"
    assert sorted(["b.10.x", "b.2.x", "b.2"], key=natural_key) == ["b.2", "b.2.x", "b.10.x"]


def test_sensitivity_file_read_and_drawn(tmp_path):
    path = tmp_path / "sensitivity.json"
    path.write_text(json.dumps({"layers": {"l.10.q": {"bits=2": 0.02, "bits=8": 1e-6},
                                           "l.2.q": {"bits=2": 0.01, "rank=0.25": 0.05}}}))
    s = load_sensitivity(path)
    assert s.metric == "fidelity" and s.reference is None and s.layers == ["l.2.q", "l.10.q"] and s.choices == ["bits=2", "bits=8", "rank=0.25"]
    assert s.values == [[0.01, None, 0.05], [0.02, 1e-6, None]]
    fig = sensitivity_figure(s)
    assert {"0.01", "0.05", "1e-06", "-"} <= {t.get_text() for t in visible_texts(fig)}
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="'layers' mapping"):
        load_sensitivity(path)
