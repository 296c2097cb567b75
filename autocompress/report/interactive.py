"""`report.html`: one self-contained page of interactive plotly figures (plotly.js embedded once, no CDN).

Sections: the summary; Optuna's `plot_pareto_front` (2 or 3 objectives, axis titles with units,
infeasible trials told apart by the study's own constraints) with the uniform baselines and the picked
trial added; the front and baseline tables; each objective over the trials (`plot_optimization_history`);
parameter importances per objective (`optuna.importance`, top 20) where the study is large enough;
every plot is guarded: one that fails becomes a note, never a failed page;
the picked plan as a heat map; the per-layer sensitivity when `sensitivity.json` exists.
"""

from __future__ import annotations

import html
import re
import warnings
from typing import Any

from autocompress.report.labels import fmt
from autocompress.report.plan_grid import PlanGrid
from autocompress.report.sensitivity import Sensitivity
from autocompress.report.study_view import StudyView
from autocompress.report.tables import baseline_table, front_table, html_table

MIN_TRIALS_FOR_IMPORTANCE = 8
TOP_PARAMS = 20
CSS = """body{font-family:system-ui,sans-serif;margin:1.5em 2.5em;color:#222;max-width:1300px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}.note{color:#666;font-size:.9em}"""


def report_html(view: StudyView, study: Any, grid: PlanGrid | None, plan_title: str,
                sensitivity: Sensitivity | None) -> str:
    """The whole page as a string."""
    import plotly.offline

    study = _in_memory(study)
    sections = [f"<h1>{html.escape(view.title())}</h1>"]
    sections += [f"<p>{html.escape(line)}</p>" for line in view.summary_lines()]
    sections.append("<h2>Pareto front</h2>")
    sections += _guarded(lambda: [_div(pareto_plot(view, study))], "the Pareto-front plot")
    if view.front:
        sections += ["<h3>Feasible Pareto front</h3>", html_table(front_table(view))]
    if view.baselines:
        sections += ["<h3>Baselines</h3>", html_table(baseline_table(view))]
    sections.append("<h2>Objectives over the trials</h2>")
    sections += _guarded(lambda: [_div(f) for f in history_plots(view, study)], "the history plots")
    sections.append("<h2>Which search parameters matter</h2>")
    sections += _guarded(lambda: importance_sections(view, study), "the importance plots")
    if grid is not None:
        sections += [f"<h2>{html.escape(plan_title)}</h2>", _div(plan_heatmap(grid))]
    if sensitivity is not None:
        sections += ["<h2>Per-layer sensitivity</h2>", _div(sensitivity_heatmap(sensitivity))]
    js = plotly.offline.get_plotlyjs()
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(view.study_name)} report"
            f"</title><style>{CSS}</style><script>{js}</script></head><body>\n" + "\n".join(sections)
            + "\n</body></html>\n")


def _in_memory(study: Any) -> Any:
    """A copy of `study` in memory: Optuna's plots read the trials again and again (slow over a database)."""
    import optuna

    copy = optuna.create_study(directions=study.directions, study_name=study.study_name)
    copy.add_trials(study.get_trials(deepcopy=False))
    return copy


def _div(fig: Any) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _guarded(make, what: str) -> list[str]:
    """The sections `make()` returns, or a note saying why `what` is missing (a plot must not sink the page)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make()
    except Exception as exc:  # Optuna's plots raise on studies they do not support
        return [f"<p class='note'>No {html.escape(what)}: {html.escape(type(exc).__name__)}: "
                f"{html.escape(str(exc).splitlines()[0] if str(exc) else '')}</p>"]


def pareto_plot(view: StudyView, study: Any) -> Any:
    """Optuna's Pareto-front plot (the first three objectives when there are more), plus baselines and pick."""
    import optuna
    import plotly.graph_objects as go

    n = min(3, len(view.metrics))
    if n < 2:
        raise ValueError("a Pareto front needs two objectives or more; see the history below")
    names = [view.label(m) for m in view.metrics[:n]]
    targets = None if n == len(view.metrics) else (lambda t: t.values[:3])
    fig = optuna.visualization.plot_pareto_front(study, target_names=names, targets=targets)
    _short_hover(fig, view)
    extra = [(view.baselines, view.baseline_name, "diamond-open", "#e07b00", 12)]
    if view.picked is not None:
        extra.append(([view.picked], f"picked: trial {view.picked.number}", "diamond", "#ffc400", 16))
    for points, name, symbol, color, size in extra:
        if not points:
            continue
        coords = [[p.values[m] for p in points] for m in view.metrics[:n]]
        text = [p.baseline or name if name == view.baseline_name else name for p in points]
        marker = {"symbol": symbol, "color": color, "size": size, "line": {"width": 2, "color": color}}
        kw = dict(mode="markers+text", name=name, text=text, textposition="top center", marker=marker,
                  hovertemplate="%{text}<extra></extra>")
        if n == 2:
            fig.add_trace(go.Scatter(x=coords[0], y=coords[1], **kw))
        else:
            fig.add_trace(go.Scatter3d(x=coords[0], y=coords[1], z=coords[2], **kw))
    fig.update_layout(title=view.title(), height=560 if n == 2 else 700)
    return fig


def _short_hover(fig: Any, view: StudyView) -> None:
    """Optuna's hover text is the trial as JSON, every parameter included (hundreds for a large model);
    replace it with the trial number, its objectives and the one-line plan."""
    by_number = {p.number: p for p in view.points}
    for trace in fig.data:
        texts = list(trace.text or ())
        numbers = [re.search(r'"number": (\d+)', str(t)) for t in texts]
        if not texts or not all(numbers):
            continue
        points = [by_number.get(int(m.group(1))) for m in numbers]
        trace.text = [f"trial {p.number}<br>" + "<br>".join(f"{m} = {fmt(m, p.values[m])}" for m in view.metrics)
                      + f"<br>{html.escape(p.plan_summary)}" if p else "" for p in points]


def history_plots(view: StudyView, study: Any) -> list[Any]:
    import optuna

    figs = []
    for i, metric in enumerate(view.metrics):
        fig = optuna.visualization.plot_optimization_history(study, target=lambda t, i=i: t.values[i],
                                                             target_name=view.label(metric))
        fig.update_layout(title=f"{metric} per trial ({view.objectives[i][0]})", height=420)
        figs.append(fig)
    return figs


def importance_sections(view: StudyView, study: Any) -> list[str]:
    """A bar chart per objective of Optuna's parameter importances (`get_param_importances`; its default
    evaluator wants 'lower is better', so maximized objectives are negated), the top `TOP_PARAMS` only;
    a note instead when the study is too small or the evaluator fails."""
    done = len(view.points)
    if done < MIN_TRIALS_FOR_IMPORTANCE:
        return [f"<p class='note'>Importances need {MIN_TRIALS_FOR_IMPORTANCE} or more complete trials; this study "
                f"has {done}.</p>"]
    out = []
    for i, (direction, metric) in enumerate(view.objectives):
        sign = -1.0 if direction == "maximize" else 1.0
        out += _guarded(lambda i=i, sign=sign, metric=metric: [_div(importance_plot(study, i, sign, metric))],
                        f"importance plot for {metric}")
    return out


def importance_plot(study: Any, i: int, sign: float, metric: str) -> Any:
    import optuna
    import plotly.graph_objects as go

    imp = optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[i])
    top = list(imp.items())[:TOP_PARAMS][::-1]  # largest at the top of a horizontal bar chart
    fig = go.Figure(go.Bar(x=[v for _, v in top], y=[k for k, _ in top], orientation="h",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    more = f" (top {TOP_PARAMS} of {len(imp)})" if len(imp) > TOP_PARAMS else ""
    fig.update_layout(title=f"Parameter importance for {metric}{more}", xaxis_title="importance (share)",
                      height=max(300, 120 + 22 * len(top)), margin={"l": 20})
    return fig


def plan_heatmap(grid: PlanGrid) -> Any:
    """The plan grid on one colour scale: each column normalized to its own range (0 = mildest, 1 =
    strongest compression), the raw value written in the cell and shown on hover."""
    import plotly.graph_objects as go

    z = [[None if v is None else c.strength(v) for v, c in zip(row, grid.columns)] for row in grid.values]
    cols = [c.title for c in grid.columns]
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=grid.rows, text=grid.texts, texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1,
        customdata=[[c.scale.replace("\n", " ") for c in grid.columns]] * len(grid.rows), xgap=2, ygap=1,
        hovertemplate="%{y}<br>%{x}: %{text}<br>(%{customdata})<extra></extra>",
        colorbar={"title": {"text": "compression<br>(per column)"}, "tickvals": [0, 1],
                  "ticktext": ["mild", "strong"]}))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=140 + 24 * len(grid), xaxis={"side": "top"}, margin={"l": 20})
    return fig


def sensitivity_heatmap(s: Sensitivity) -> Any:
    import plotly.graph_objects as go

    text = [["-" if v is None else f"{v:.2g}" for v in row] for row in s.values]
    fig = go.Figure(go.Heatmap(z=s.values, x=s.choices, y=s.layers, text=text, texttemplate="%{text}",
                               colorscale="Magma", reversescale=True,
                               colorbar={"title": {"text": f"drop in<br>{s.metric}"}},
                               hovertemplate="%{y}<br>%{x}: drop %{z:.3g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=140 + 24 * len(s.layers), xaxis={"side": "top"},
                      title=f"Drop in {s.metric} when only one layer is compressed")
    return fig
