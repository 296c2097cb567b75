"""Point labels that do not sit on each other: a greedy choice among a few offsets per label.

For each label in turn, every candidate offset is tried and scored by what its text box would cover:
leaving the axes costs most, then another label already placed, then a data point; ties go to the nearer
offset. Labels pushed to a far offset get a thin leader line back to their point. Call it after the
figure's layout is final (positions are in display pixels).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.transforms import Bbox

# (dx, dy) in points, horizontal and vertical alignment of the text
_NEAR = [(7, 5, "left", "bottom"), (7, -5, "left", "top"), (-7, 5, "right", "bottom"), (-7, -5, "right", "top"),
         (0, 10, "center", "bottom"), (0, -10, "center", "top")]
_FAR = [(d * sx, d * sy, "left" if sx > 0 else "right", "bottom" if sy > 0 else "top")
        for d in (22, 38, 56) for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
_FAR += [(0, d * sy, "center", "bottom" if sy > 0 else "top") for d in (26, 44) for sy in (1, -1)]
CANDIDATES = _NEAR + _FAR
PAD = 9.0  # pixels around a data point that a label should keep clear of (a baseline diamond's half-width)
ZORDER = 3.5  # above faint dots and the front line, below the highlighted markers: a label never hides one


def place_labels(ax, items: Sequence[tuple[tuple[float, float], str, str]],
                 obstacles: Sequence[tuple[float, float]], fontsize: float = 9,
                 lines: Sequence[Sequence[tuple[float, float]]] = (), avoid: Sequence[Bbox] = ()) -> list:
    """Annotate `ax` with `items` [((x, y), text, colour)], avoiding each other, the `obstacles` (points)
    and the polylines `lines` (all in data coordinates) and the `avoid` boxes (display pixels: text
    already on the axes). Labels of crowded points choose first. Returns the annotations."""
    if not items:
        return []
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    dots = ax.transData.transform(np.asarray(obstacles, dtype=float).reshape(-1, 2))
    trace = [_sample(ax.transData.transform(np.asarray(line, dtype=float))) for line in lines if len(line) > 1]
    strokes = np.concatenate(trace) if trace else np.zeros((0, 2))  # front line, later also leader lines
    anchors = ax.transData.transform(np.asarray([xy for xy, _, _ in items], dtype=float))
    crowd = [int((np.hypot(*(dots - a).T) < 60).sum()) for a in anchors]
    placed: list[Bbox] = list(avoid)
    out = []
    for k in sorted(range(len(items)), key=lambda k: -crowd[k]):
        (x, y), text, color = items[k]
        best, best_score = None, None
        for rank, (dx, dy, ha, va) in enumerate(CANDIDATES):
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=fontsize, color=color, zorder=ZORDER)
            box = ann.get_window_extent(renderer)
            ann.remove()
            far = rank >= len(_NEAR)
            leader = _leader(anchors[k], box) if far else np.zeros((0, 2))
            score = (1000 * _outside(box, frame) + 100 * sum(box.overlaps(b) for b in placed)
                     + 40 * _covered(box, dots) + 3 * min(_covered(box, strokes), 5)
                     + 50 * sum(_covered(b, leader, pad=0) > 0 for b in placed) + 20 * _near(leader, dots)
                     + rank + (12 if far else 0))
            if best_score is None or score < best_score:
                best, best_score = (dx, dy, ha, va, box, leader), score
        dx, dy, ha, va, box, leader = best
        arrow = {"arrowstyle": "-", "color": color, "lw": 0.7, "shrinkA": 0, "shrinkB": 4} if len(leader) else None
        out.append(ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=fontsize, color=color, zorder=ZORDER, arrowprops=arrow,
                               bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}))
        placed.append(box)
        strokes = np.concatenate([strokes, leader])
    return out


def _leader(point: np.ndarray, box: Bbox) -> np.ndarray:
    """Samples along the leader line from the box's nearest edge to `point`, stopping short of the point."""
    edge = np.array([min(max(point[0], box.x0), box.x1), min(max(point[1], box.y0), box.y1)])
    length = float(np.hypot(*(point - edge)))
    if length < 1:
        return np.zeros((0, 2))
    t = np.arange(0.0, max(0.0, length - 8.0), 4.0) / length
    return edge + (point - edge) * t[:, None]


def _near(samples: np.ndarray, dots: np.ndarray, radius: float = 5.0) -> int:
    """How many `dots` lie within `radius` pixels of the sampled line."""
    if not len(samples) or not len(dots):
        return 0
    dist = np.hypot(samples[:, None, 0] - dots[None, :, 0], samples[:, None, 1] - dots[None, :, 1])
    return int((dist.min(axis=0) < radius).sum())


def _outside(box: Bbox, frame: Bbox) -> bool:
    return box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1


def _covered(box: Bbox, dots: np.ndarray, pad: float = PAD) -> int:
    if not len(dots):
        return 0
    inside = ((dots[:, 0] > box.x0 - pad) & (dots[:, 0] < box.x1 + pad)
              & (dots[:, 1] > box.y0 - pad) & (dots[:, 1] < box.y1 + pad))
    return int(inside.sum())


def _sample(points: np.ndarray, step: float = 6.0) -> np.ndarray:
    """Points every `step` pixels along a polyline given in display coordinates."""
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(1, int(np.hypot(*(b - a)) // step))
        out.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.concatenate(out)
