"""Weight clustering (`quant_method: kmeans`): each weight is replaced by the nearest of 2^bits shared values.

Deep Compression's weight sharing and SqueezeLLM's non-uniform quantization: the values of a weight matrix
[out, in] are clustered by one-dimensional k-means (Lloyd's algorithm, `kmeans_1d`), and each weight is stored
as the bits-wide index of its centroid; the centroids (the codebook) are stored as float16.

The codebook contract, shared by the quantize policy, `verify.py` and the packed export (export/matrix.py):
  - one codebook of 2^bits float16-exact values (held as float32, sorted ascending) per group of `group_size`
    consecutive output rows (the last group may be shorter), or one per matrix when group_size is None. Note
    the direction: the uniform grid's group_size counts input channels per scale; a codebook's counts output
    channels (rows), since a codebook serves whole rows.
  - a codebook whose rows hold exact zeros (pruned weights) holds exactly 0.0 as one of its centroids (k-means
    keeps the centroid nearest 0 at 0.0), so pruned weights stay pruned.
  - each weight is the centroid nearest to it (`codebook_indices`; ties and duplicate centroids give the same
    value), so the index of a clustered weight is recovered exactly from the weight itself.
k-means is deterministic: the k centroids start evenly spaced from the smallest to the largest value
(Deep Compression's linear initialization, which keeps centroids for the rare large weights) and move by Lloyd
steps until none moves (at most `ITERATIONS`); a centroid left without values keeps its place. No randomness,
so no seed. All codebooks of equally tall row groups are clustered together as one batch. The policy records
the codebook as `module._autocompress_grid` (quantize.GRID_ATTR) where the grid methods record a `QuantGrid`.
With `kmeans_weighting: activation` the Lloyd steps are weighted (kmeans_weighted.py: SqueezeLLM's sensitivity
weighting with the input activations' second moment as the sensitivity); the codebook contract is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autocompress.plan import LayerPlan

ITERATIONS = 50
FP16_MAX = 65504.0


@dataclass(frozen=True, eq=False)
class Codebook:
    """The codebooks of one clustered weight [out, in]: `centroids` float32 [books, 2^bits], float16-exact,
    each row sorted ascending; `group_size` output rows per codebook (None: one codebook)."""

    bits: int
    group_size: int | None
    centroids: torch.Tensor

    def row_groups(self, rows: int) -> list[slice]:
        return row_groups(rows, self.group_size)


def row_groups(rows: int, group_size: int | None) -> list[slice]:
    """The row slices each codebook serves (module docstring)."""
    step = rows if group_size is None else max(1, min(group_size, rows))
    return [slice(r, min(r + step, rows)) for r in range(0, max(rows, 1), step)]


def num_books(rows: int, group_size: int | None) -> int:
    """How many codebooks a matrix of `rows` rows holds."""
    return len(row_groups(rows, group_size))


def kmeans_1d(x: torch.Tensor, k: int, pin_zero: torch.Tensor | None = None,
              iterations: int = ITERATIONS) -> torch.Tensor:
    """k sorted centroids (float32 [B, k]) of each row of the values `x` [B, n] (a 1-D `x` is one row, and gives
    [k]) by Lloyd's algorithm (module docstring). Seeds: evenly spaced from the smallest to the largest
    value of the row (Deep Compression's linear initialization), zeros left out where `pin_zero` [B] (bool) is
    true; there the centroid nearest 0 is held at exactly 0.0 after every step. An empty row gives k zeros."""
    one = x.dim() == 1
    xs = torch.sort(x.detach().reshape(1 if one else x.shape[0], -1).float(), dim=1).values
    pin = pin_rows(xs, pin_zero)
    c = lloyd(xs, linear_seeds(xs, k, pin), pin, iterations) if xs.shape[1] else torch.zeros(xs.shape[0], k)
    return c[0] if one else c


def pin_rows(xs: torch.Tensor, pin_zero: torch.Tensor | None) -> torch.Tensor:
    """bool [B]: the rows of `xs` [B, n] whose codebook keeps a centroid at 0.0 (`pin_zero`, or none)."""
    return torch.zeros(xs.shape[0], dtype=torch.bool) if pin_zero is None else pin_zero.reshape(-1).cpu()


def linear_seeds(xs: torch.Tensor, k: int, pin: torch.Tensor) -> torch.Tensor:
    """k seeds [B, k] evenly spaced from the smallest to the largest value of each row of `xs` [B, n > 0],
    zeros left out of the range where `pin` [B], then pinned (`pin_centroids`)."""
    inf = torch.tensor(float("inf"))
    skip = pin[:, None] & (xs == 0)
    lo = torch.where(skip, inf, xs).amin(1)
    hi = torch.where(skip, -inf, xs).amax(1)
    lo, hi = torch.where(torch.isfinite(lo), lo, 0.0), torch.where(torch.isfinite(hi), hi, 0.0)
    return pin_centroids(lo[:, None] + (hi - lo)[:, None] * (torch.arange(k) / max(k - 1, 1))[None, :], pin)


def lloyd(xs: torch.Tensor, c: torch.Tensor, pin: torch.Tensor, iterations: int = ITERATIONS,
          s: torch.Tensor | None = None) -> torch.Tensor:
    """Lloyd steps from the sorted centroids `c` [B, k] on the row-sorted values `xs` [B, n] until none moves
    (at most `iterations`): each value to its nearest centroid, each centroid to the mean of its values, or,
    with weights `s` (float64 >= 0, xs's shape), to their weighted mean sum(s x) / sum(s). A centroid with no
    values (or only weight 0) keeps its place; pinned rows keep a centroid at exactly 0.0 (`pin_centroids`)."""
    x64, k = xs.double(), c.shape[1]
    mass = torch.ones_like(x64) if s is None else s
    for _ in range(iterations):
        idx = torch.searchsorted((c[:, 1:] + c[:, :-1]).contiguous() / 2, xs)
        sums = torch.zeros(xs.shape[0], k, dtype=torch.float64).scatter_add_(1, idx, x64 * mass)
        counts = torch.zeros(xs.shape[0], k, dtype=torch.float64).scatter_add_(1, idx, mass)
        means = (sums / torch.where(counts > 0, counts, 1.0)).float()
        new = pin_centroids(torch.where(counts > 0, means, c), pin)
        if torch.equal(new, c):
            break
        c = new
    return c


def pin_centroids(c: torch.Tensor, pin: torch.Tensor) -> torch.Tensor:
    """`c` [B, k] sorted, with the centroid nearest 0 of every pinned row set to exactly 0.0."""
    if bool(pin.any()):
        c = c.clone()
        near = c.abs().argmin(1)
        c[pin, near[pin]] = 0.0
    return torch.sort(c, dim=1).values


def _fp16(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(-FP16_MAX, FP16_MAX).to(torch.float16).float() + 0.0  # + 0.0: no -0.0 centroid
    return torch.sort(c, dim=-1).values


def _batches(rows: int, group_size: int | None) -> list[tuple[int, int, int]]:
    """(first book, first row, rows per book) of the runs of equally tall row groups: the full groups, then the
    shorter last one (at most two runs)."""
    groups = row_groups(rows, group_size)
    height = groups[0].stop - groups[0].start
    full = sum(1 for g in groups if g.stop - g.start == height)
    out = [(0, 0, height)]
    if full < len(groups):
        out.append((full, groups[full].start, groups[-1].stop - groups[-1].start))
    return out


def _runs(w: torch.Tensor, group_size: int | None):
    """(book slice, row slice, values [books, rows per book * cols]) for each run of `_batches`."""
    rows = w.shape[0]
    total = num_books(rows, group_size)
    batches = _batches(rows, group_size)
    for i, (book, start, height) in enumerate(batches):
        end_book = batches[i + 1][0] if i + 1 < len(batches) else total
        stop = start + (end_book - book) * height
        yield slice(book, end_book), slice(start, stop), w[start:stop].reshape(end_book - book, -1)


def cluster(w: torch.Tensor, bits: int, group_size: int | None,
            importance: torch.Tensor | None = None) -> tuple[torch.Tensor, Codebook]:
    """(clustered w in w's dtype, its Codebook): every weight of `w` [out, in] replaced by its nearest centroid
    (module docstring). `importance` (float [in], >= 0) weights every weight w_ij of the k-means objective by
    importance_j (kmeans_weighted.py); None clusters unweighted. Does not modify `w`."""
    k = 2 ** bits
    centroids = torch.empty(num_books(w.shape[0], group_size), k)
    weights = None if importance is None else _runs(importance.detach().cpu().float().expand(w.shape), group_size)
    if weights is not None:
        from autocompress.policies.kmeans_weighted import weighted_kmeans_1d
    for books, _, vals in _runs(w.detach().cpu().float(), group_size):
        pin = (vals == 0).any(1)
        c = kmeans_1d(vals, k, pin) if weights is None else weighted_kmeans_1d(vals, next(weights)[2], k, pin)
        centroids[books] = _fp16(c)
    book = Codebook(bits, group_size, centroids)
    return codebook_values(codebook_indices(w, book), book).to(w.dtype), book


def codebook_indices(w: torch.Tensor, book: Codebook) -> torch.Tensor:
    """The index (int32 [out, in], in [0, 2^bits)) of the nearest centroid of each weight of `w`."""
    out = torch.empty(w.shape, dtype=torch.int32)
    for books, rows, vals in _runs(w.detach().cpu().float(), book.group_size):
        c = book.centroids[books]
        idx = torch.searchsorted((c[:, 1:] + c[:, :-1]).contiguous() / 2, vals.contiguous())
        out[rows] = idx.reshape(-1, w.shape[1]).to(torch.int32)
    return out


def codebook_values(idx: torch.Tensor, book: Codebook) -> torch.Tensor:
    """float32 [out, in]: the centroid each index names (the inverse of `codebook_indices` on clustered
    weights)."""
    out = torch.empty(idx.shape, dtype=torch.float32)
    for books, rows, vals in _runs(idx, book.group_size):
        out[rows] = torch.gather(book.centroids[books], 1, vals.long()).reshape(-1, idx.shape[1])
    return out


def codebook_violation(w: torch.Tensor, entry: LayerPlan, book: object) -> str | None:
    """Why the [out, in] weight `w` is not exactly clustered on its recorded codebook as `entry` plans, or None:
    the codebook must have the entry's bits and group_size, one float16-exact row of 2^bits sorted centroids per
    group of rows, and every weight must equal its nearest centroid in w's dtype (what the exporter packs)."""
    if not isinstance(book, Codebook):
        return "clustered by the plan (kmeans) but has no recorded codebook (_autocompress_grid)"
    if (book.bits, book.group_size) != (entry.bits, entry.group_size):
        return f"recorded codebook (bits, group_size) = {(book.bits, book.group_size)}, planned " \
               f"{(entry.bits, entry.group_size)}"
    c = book.centroids
    shape = (num_books(w.shape[0], book.group_size), 2 ** book.bits)
    if tuple(c.shape) != shape:
        return f"recorded codebook has shape {tuple(c.shape)}, needs {shape}"
    if not torch.equal(c.to(torch.float16).float(), c) or not torch.equal(torch.sort(c, dim=1).values, c):
        return "recorded codebook has values that are not sorted float16 values"
    off = codebook_values(codebook_indices(w, book), book).to(w.dtype) != w.cpu()
    if bool(off.any()):
        return f"{int(off.sum())} of {w.numel()} weights are off the recorded {book.bits}-bit codebook"
    return None


def quantize_kmeans(w: torch.Tensor, entry: LayerPlan, gram: torch.Tensor | None) -> tuple[torch.Tensor, Codebook]:
    """The `quant_method: kmeans` quantizer (quantize.QUANTIZERS): `cluster` at the entry's bits and group_size.
    Unweighted it needs no calibration data; with `kmeans_weighting: activation` it reads the layer's input
    Gram matrix `gram` [in, in] (its diagonal: kmeans_weighted.activation_importance)."""
    if entry.kmeans_weighting == "none":
        return cluster(w, entry.bits, entry.group_size)
    from autocompress.policies.kmeans_weighted import activation_importance

    return cluster(w, entry.bits, entry.group_size, importance=activation_importance(gram, entry, w.shape[1]))


def _needs_gram(entry: LayerPlan) -> bool:
    return entry.kmeans_weighting != "none"


quantize_kmeans.needs_gram = _needs_gram  # data-aware only when weighted
