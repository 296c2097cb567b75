"""The static figures (matplotlib, Agg, no pyplot state): the Pareto front and the picked plan's heat map.

`pareto_figure(view)` draws the objectives pairwise (2 objectives: one panel; 3: three in a row; one
objective: its value per trial): every COMPLETE trial as a faint dot, infeasible ones as crosses, the
feasible front highlighted and connected, the uniform baselines labelled, the picked trial starred, a
constraint's bound as a dashed line. `plan_figure(grid, title)` draws a `PlanGrid` as narrow heat maps side
by side, one colour scale per column, the value written in every cell. `save(fig, path)` writes a PNG.
"""

from __future__ import annotations

import math
import re
import textwrap
from itertools import combinations
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from autocompress.report.placement import place_labels
from autocompress.report.plan_grid import PlanGrid
from autocompress.report.study_view import StudyView
from autocompress.search.rundir.trial_result import TrialResult

DPI = 150
FONT = 10  # body text; nothing is drawn below 9 pt
COLORS = {"other": "#9a9a9a", "infeasible": "#d62728", "front": "#1f77b4", "baseline": "#e07b00",
          "picked": "#ffc400", "bound": "#c0392b"}
ARROWS = {(1, 1): "\u2197", (1, -1): "\u2198", (-1, 1): "\u2196", (-1, -1): "\u2199"}
MAX_FRONT_LABELS = 15


def save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return Path(path)


# ---- Pareto front ------------------------------------------------------------------------------------


def pareto_figure(view: StudyView) -> Figure:
    """The objectives pairwise; see the module docstring."""
    n = len(view.metrics)
    pairs: list[tuple[int | None, int]] = list(combinations(range(n), 2)) if n > 1 else [(None, 0)]
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig = Figure(figsize=(5.4 * ncols + (0.8 if ncols == 1 else 0), 4.4 * nrows + 1.3), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    bounds = [_panel(ax, view, i, j) for ax, (i, j) in zip(axes, pairs)]
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle("\n".join(textwrap.wrap(view.title(), int(fig.get_figwidth() * 11))), fontsize=FONT + 2)
    handles = _legend(view, any(bounds))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3 * ncols - 1, len(handles)),
               fontsize=FONT - 1, frameon=False)
    fig.canvas.draw()  # settle the layout, then place the labels where they collide least
    fig.set_layout_engine("none")
    for ax, (i, j) in zip(axes, pairs):
        _labels(ax, view, i, j)
    return fig


def _xy(view: StudyView, p: TrialResult, i: int | None, j: int) -> tuple[float, float]:
    x = float(p.number) if i is None else p.values[view.metrics[i]]
    return x, p.values[view.metrics[j]]


def _panel(ax, view: StudyView, i: int | None, j: int) -> bool:
    """Draw one pair of objectives; True when a constraint bound is drawn on it."""
    def scatter(points: list[TrialResult], **kw) -> None:
        if points:
            xs, ys = zip(*(_xy(view, p, i, j) for p in points))
            ax.scatter(xs, ys, **kw)

    pts = view.points
    scatter([p for p in pts if p.feasible and not p.front], s=22, color=COLORS["other"], alpha=0.45, lw=0, zorder=2)
    scatter([p for p in pts if not p.feasible], s=30, marker="x", color=COLORS["infeasible"], alpha=0.7, lw=1.3,
            zorder=2)
    front = view.front
    line = _front_line(view, front, i, j)
    if line:
        ax.plot(*zip(*line), color=COLORS["front"], lw=1.6, alpha=0.8, zorder=3.7)  # above the labels
    scatter(front, s=42, color=COLORS["front"], edgecolor="black", lw=0.6, zorder=4)
    scatter(view.baselines, s=70, marker="D", facecolor="none", edgecolor=COLORS["baseline"], lw=1.8, zorder=5)
    if view.picked is not None:
        scatter([view.picked], s=300, marker="*", color=COLORS["picked"], edgecolor="black", lw=0.8, zorder=6)
    ax.set_xlabel("trial number" if i is None else view.label(view.metrics[i]), fontsize=FONT)
    ax.set_ylabel(view.label(view.metrics[j]), fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(5))
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        axis.set_major_formatter(formatter)
    ax.grid(True, lw=0.4, alpha=0.5)
    ax.margins(0.1)
    _better(ax, view, i, j)
    return _bounds(ax, view, i, j)


def _front_line(view: StudyView, front: list[TrialResult], i: int | None, j: int) -> list[tuple[float, float]]:
    """The front points not dominated within this pair of objectives, sorted along x."""
    if i is None:
        return []
    pair = [view.objectives[i], view.objectives[j]]

    def key(p: TrialResult) -> tuple[float, float]:
        return tuple(-p.values[m] if d == "maximize" else p.values[m] for d, m in pair)

    keep = [p for p in front if not any(all(a <= b for a, b in zip(key(q), key(p))) and key(q) != key(p)
                                        for q in front)]
    return sorted({_xy(view, p, i, j) for p in keep})


def _bounds(ax, view: StudyView, i: int | None, j: int) -> bool:
    """A dashed line at each constraint bound on this panel's metrics (a note when it lies far outside).
    True when a line is drawn."""
    notes, drawn = [], False
    for metric, op, bound in view.constraints:
        for k, vertical in ((i, True), (j, False)):
            if k is None or view.metrics[k] != metric:
                continue
            lo, hi = ax.get_xlim() if vertical else ax.get_ylim()
            span = hi - lo
            if not lo - 0.5 * span <= bound <= hi + 0.5 * span:
                notes.append(f"{metric} {op} {bound:g}: bound outside this view")
                continue
            draw = ax.axvline if vertical else ax.axhline
            draw(bound, color=COLORS["bound"], ls="--", lw=1.2, zorder=1)
            drawn = True
            lo, hi = ax.get_xlim() if vertical else ax.get_ylim()  # now including the line
            bad = (lo, bound) if op in (">=", ">") else (bound, hi)  # the side that breaks the constraint
            (ax.axvspan if vertical else ax.axhspan)(*bad, color=COLORS["bound"], alpha=0.06, lw=0, zorder=0)
            (ax.set_xlim if vertical else ax.set_ylim)(lo, hi)
            if vertical:
                ax.text(bound, 0.98, f" {metric} {op} {bound:g}", transform=ax.get_xaxis_transform(),
                        rotation=90, va="top", ha="right", fontsize=FONT - 1, color=COLORS["bound"])
            else:
                ax.text(0.01, bound, f"{metric} {op} {bound:g}", transform=ax.get_yaxis_transform(),
                        va="bottom", ha="left", fontsize=FONT - 1, color=COLORS["bound"])
    if notes:
        ax.set_title("; ".join(notes), loc="left", fontsize=FONT - 1, color=COLORS["bound"])
    return drawn


def _better(ax, view: StudyView, i: int | None, j: int) -> None:
    """'better' with an arrow, in the corner the objectives improve towards."""
    dy = 1 if view.objectives[j][0] == "maximize" else -1
    dx = 1 if i is None or view.objectives[i][0] == "maximize" else -1
    if i is None:  # one objective over trials: only up or down is better
        text, x, ha = "better " + ("\u2191" if dy > 0 else "\u2193"), 0.98, "right"
    else:
        text, x, ha = ("better " + ARROWS[dx, dy]), (0.98 if dx > 0 else 0.02), ("right" if dx > 0 else "left")
    ax.text(x, 0.97 if dy > 0 else 0.03, text, transform=ax.transAxes, ha=ha, va="top" if dy > 0 else "bottom",
            fontsize=FONT - 1, color="#555555", bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none",
                                                      "alpha": 0.8})


def _labels(ax, view: StudyView, i: int | None, j: int) -> None:
    """Baselines by name and (for a small front) front trials by number, placed to avoid each other."""
    items = []
    for p in view.baselines:
        items.append((_xy(view, p, i, j), p.baseline + (f" (#{p.number})" if p.front else ""), COLORS["baseline"]))
    front = view.front
    if len(front) <= MAX_FRONT_LABELS:
        items += [(_xy(view, p, i, j), f"#{p.number}", COLORS["front"]) for p in front if p.baseline is None]
    elif view.picked is not None:
        items.append((_xy(view, view.picked, i, j), f"#{view.picked.number}", "black"))
    obstacles = [_xy(view, p, i, j) for p in view.points]
    renderer = ax.figure.canvas.get_renderer()
    texts = [t.get_window_extent(renderer) for t in ax.texts if t.get_text().strip()]  # bounds, "better"
    place_labels(ax, items, obstacles, fontsize=FONT - 1, lines=[_front_line(view, front, i, j)], avoid=texts)


def _legend(view: StudyView, bounds: bool) -> list[Line2D]:
    def h(label: str, **kw) -> Line2D:
        return Line2D([], [], label=label, **{"ls": "none", **kw})

    out = [h("feasible Pareto front", marker="o", color=COLORS["front"], mec="black", ms=7, ls="-")] \
        if view.front else []
    if any(p.feasible and not p.front for p in view.points):
        out.append(h("other feasible trials", marker="o", color=COLORS["other"], alpha=0.6, ms=6))
    if any(not p.feasible for p in view.points):
        out.append(h("infeasible (breaks a constraint)", marker="x", color=COLORS["infeasible"], ms=7, mew=1.5))
    if view.baselines:
        out.append(h(view.baseline_name, marker="D", mfc="none", mec=COLORS["baseline"], mew=1.8, ms=7))
    if view.picked is not None:
        out.append(h(f"picked: trial {view.picked.number}", marker="*", color=COLORS["picked"], mec="black",
                     ms=14))
    if bounds:
        out.append(Line2D([], [], color=COLORS["bound"], ls="--", lw=1.2, label="constraint bound"))
    return out


# ---- the plan -----------------------------------------------------------------------------------------

ROW_IN, COL_IN = 0.24, 1.25  # inches per heat-map row / column


def plan_figure(grid: PlanGrid, title: str) -> Figure:
    """`grid` as side-by-side heat maps (one per column, own colour bar), values written in the cells."""
    n, k = len(grid), len(grid.columns)
    label_in = 0.085 * max((len(r) for r in grid.rows), default=10) + 0.3
    width = label_in + k * COL_IN + 0.4
    heat_in = max(n, 1) * ROW_IN
    fig = Figure(figsize=(max(width, 6.5), heat_in + 2.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(wspace=0.06)
    gs = fig.add_gridspec(2, k, height_ratios=[heat_in, 0.14])
    values = np.array([[np.nan if v is None else v for v in row] for row in grid.values], dtype=float)
    values = values.reshape(n, k)
    blocks = _block_edges(grid.rows)
    for c, col in enumerate(grid.columns):
        ax = fig.add_subplot(gs[0, c])
        cmap = _column_cmap(col.cmap, col.low_is_strong)
        im = ax.imshow(np.ma.masked_invalid(values[:, c:c + 1]), cmap=cmap, vmin=col.vmin, vmax=col.vmax,
                       aspect="auto", interpolation="nearest")
        for r in range(n):
            v = values[r, c]
            dark = not np.isnan(v) and _luminance(cmap(im.norm(v))) < 0.5
            ax.text(0, r, grid.texts[r][c], ha="center", va="center", fontsize=FONT - 1,
                    color="white" if dark else ("#888888" if np.isnan(v) else "black"))
        ax.set_xticks([])
        ax.set_title(col.title, fontsize=FONT)
        ax.set_yticks(range(n), grid.rows if c == 0 else [""] * n, fontsize=FONT - 1)
        if c:
            ax.tick_params(axis="y", length=0)
        ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
        ax.grid(which="minor", axis="y", color="white", lw=0.8)
        ax.tick_params(which="minor", length=0)
        for edge in blocks:
            ax.axhline(edge - 0.5, color="#333333", lw=1.1)
        cbar = fig.colorbar(im, cax=fig.add_subplot(gs[1, c]), orientation="horizontal", ticks=col.ticks)
        cbar.set_label(col.scale, fontsize=FONT - 1)
        cbar.ax.tick_params(labelsize=FONT - 1)
        if col.key in ("sparsity", "rank", "units"):
            cbar.ax.set_xticklabels([f"{t:.0%}" for t in col.ticks])
    wrap = max(40, int(max(width, 6.5) * 11))
    fig.suptitle("\n".join(w for line in title.splitlines() for w in textwrap.wrap(line, wrap)), fontsize=FONT + 1)
    return fig


def _column_cmap(name: str, reverse: bool) -> ListedColormap:
    """The named colour map without its near-white end, so that the mildest setting still shows a tint
    against the light grey of an untouched cell; reversed when low values are the strong ones."""
    colors = matplotlib.colormaps[name](np.linspace(0.18, 1.0, 256))
    return ListedColormap(colors[::-1] if reverse else colors).with_extremes(bad="#f4f4f4")


def _block_edges(rows: list[str]) -> list[int]:
    """Row indices where the block number (the first number in the name) changes."""
    def block(name: str) -> str | None:
        m = re.search(r"\.(\d+)\.", name)
        return m.group(1) if m else None

    return [r for r in range(1, len(rows)) if block(rows[r]) != block(rows[r - 1])]


def _luminance(rgba: tuple[float, ...]) -> float:
    r, g, b = rgba[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b

