"""Per-unit sensitivity: `RUN_DIR/sensitivity.json` read, checked and drawn as a heat map.

The file is written by `autocompress sensitivity` (autocompress/search/seeding/sensitivity.py); the report reads
    {"metric": "fidelity",                       # optional: the quality metric
     "reference": 0.99998,                       # optional: its value for the mildest plan
     "layers": {"<unit>": {"<choice label>": <loss>, ...}, ...}, ...}   # other keys are ignored
where a loss is how much worse the metric gets when only that unit takes that choice (e.g. "quantize
bits=4"): larger means more sensitive. Rows are units in natural order, columns the choices in order of
first appearance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize, SymLogNorm
from matplotlib.figure import Figure

from autocompress.errors import UserError
from autocompress.report.labels import natural_key

FONT = 10
FORMAT = '{"layers": {"<layer>": {"<choice>": <drop>}}}'


@dataclass
class Sensitivity:
    metric: str
    reference: float | None  # the metric of the reference plan the losses are measured from, when given
    layers: list[str]
    choices: list[str]
    values: list[list[float | None]]  # [layer][choice]; None where that pair was not measured


def load_sensitivity(path: str | Path) -> Sensitivity:
    """Read and check the file. `UserError` naming the file and the expected format when it is malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot be read as JSON ({exc}); expected {FORMAT}, or delete the file") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise UserError(f"{path}: needs a non-empty 'layers' mapping; expected {FORMAT}")
    choices: list[str] = []
    for layer, row in layers.items():
        if not isinstance(row, dict):
            raise UserError(f"{path}: layer {layer!r} must map choice labels to numbers; expected {FORMAT}")
        for choice, drop in row.items():
            if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not math.isfinite(drop):
                raise UserError(f"{path}: layers.{layer}.{choice} = {drop!r} is not a finite number")
            if choice not in choices:
                choices.append(choice)
    names = sorted(layers, key=natural_key)
    values = [[(float(layers[n][c]) if c in layers[n] else None) for c in choices] for n in names]
    ref = data.get("reference")
    ref = float(ref) if isinstance(ref, (int, float)) and not isinstance(ref, bool) else None
    return Sensitivity(str(data.get("metric", "fidelity")), ref, names, choices, values)


def _norm(values: np.ndarray) -> Normalize:
    """Linear, or logarithmic when the losses span more than two decades (zeros kept on a linear stretch)."""
    if not values.size:
        return Normalize(0.0, 1.0)
    lo, hi = float(values.min()), float(values.max())
    positive = values[values > 0]
    if lo >= 0 and positive.size and hi / positive.min() > 100:
        return LogNorm(lo, hi) if lo > 0 else SymLogNorm(float(positive.min()), vmin=0.0, vmax=hi, base=10)
    return Normalize(min(lo, 0.0), hi if hi > lo else lo + 1e-12)


def sensitivity_figure(s: Sensitivity) -> Figure:
    """Rows = layers, columns = choices, colour and text = the metric's drop (darker = more sensitive)."""
    import matplotlib

    n, k = len(s.layers), len(s.choices)
    grid = np.array([[np.nan if v is None else v for v in row] for row in s.values], dtype=float).reshape(n, k)
    finite = grid[~np.isnan(grid)]
    norm = _norm(finite)
    label_in = 0.085 * max(len(x) for x in s.layers) + 0.3
    fig = Figure(figsize=(max(6.5, label_in + 1.15 * k + 1.6), 0.26 * n + 2.4), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="#f4f4f4")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    for r in range(n):
        for c in range(k):
            v = grid[r, c]
            dark = not np.isnan(v) and norm(v) > 0.55
            ax.text(c, r, "-" if np.isnan(v) else f"{v:.2g}", ha="center", va="center", fontsize=FONT - 1,
                    color="white" if dark else "black")
    ax.set_xticks(range(k), [c.replace(" ", "\n", 1) for c in s.choices], fontsize=FONT - 1)
    ax.set_yticks(range(n), s.layers, fontsize=FONT - 1)
    ax.xaxis.tick_top()
    cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cbar.set_label(f"{s.metric} lost (higher = more sensitive)", fontsize=FONT - 1)
    cbar.ax.tick_params(labelsize=FONT - 1)
    ref = "" if s.reference is None else f" (reference {s.metric} {s.reference:.6g})"
    fig.suptitle(f"Sensitivity: {s.metric} lost when only one unit is compressed{ref}", fontsize=FONT + 1)
    return fig
