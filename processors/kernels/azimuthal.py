"""Azimuthal integration as a sparse matrix: a pixel-to-bin table built once per geometry, then
one sparse matrix-vector pass per frame.

Splitting rule (pyFAI's bounding-box splitting, ``splitBBox_common.calc_lut_1d``): a pixel spans
[pos − delta, pos + delta] on the radial axis, in fractional bin units f = (x − lo) / width. Its
bins run from b0 = trunc(f_min) to b1 = trunc(f_max), clipped to the axis. A pixel inside one bin
gives it weight 1. Otherwise the first bin gets (b0 + 1 − f_min)/(f_max − f_min), the last
(f_max − b1)/(f_max − f_min) and each bin between 1/(f_max − f_min). As in pyFAI (C truncation,
then clipping), the parts of a pixel beyond the first or last bin fold into that bin. With
delta = 0 this is the unsplit histogram.

Storage: pixel-major (the transpose of pyFAI's per-bin CSR). The bins of a pixel are
contiguous, so a pixel needs only its first bin, its number of bins and their weights. The
per-frame pass then reads the frame and the table sequentially and adds into per-bin sums that
stay in L1 cache. The per-bin CSR form (pixel indices and weights per bin) has the same entries;
at 4 Mpx, gathering the frame through it was 2.7 times slower.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def _bin_span(pos: float, delta: float, lo: float, width: float,
              npt: int) -> tuple[int, int, float, float]:
    """First and last bin of a pixel (b0 > b1 when it misses the axis) and its fractional ends."""
    f_min = ((pos - delta) - lo) / width
    f_max = ((pos + delta) - lo) / width
    b0 = int(f_min)      # truncation toward zero, as pyFAI's C cast
    b1 = int(f_max)
    if b1 < 0 or b0 >= npt:
        return 1, 0, f_min, f_max
    return max(b0, 0), min(b1, npt - 1), f_min, f_max


@nb.njit(cache=True)
def bbox_table(pos: np.ndarray, delta: np.ndarray, valid: np.ndarray, lo: float, width: float,
               npt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-to-bin table of the flat pixel arrays ``pos`` and ``delta`` (radial centre and
    half-extent) over ``npt`` bins of ``width`` from ``lo``.

    Returns per pixel its first bin (int32) and number of bins (int32; 0 for pixels with
    ``valid`` False or off the axis), and the weights (float32) of all pixels in pixel order.
    """
    n = pos.shape[0]
    first = np.zeros(n, dtype=np.int32)
    count = np.zeros(n, dtype=np.int32)
    total = 0
    for idx in range(n):
        if valid[idx]:
            b0, b1, _, _ = _bin_span(pos[idx], delta[idx], lo, width, npt)
            if b1 >= b0:
                first[idx] = b0
                count[idx] = b1 - b0 + 1
                total += b1 - b0 + 1
    weights = np.empty(total, dtype=np.float32)
    j = 0
    for idx in range(n):
        if count[idx] == 0:
            continue
        if count[idx] == 1:
            weights[j] = 1.0
            j += 1
            continue
        b0, b1, f_min, f_max = _bin_span(pos[idx], delta[idx], lo, width, npt)
        inv_extent = 1.0 / (f_max - f_min)
        weights[j] = inv_extent * ((b0 + 1) - f_min)
        for k in range(1, b1 - b0):
            weights[j + k] = inv_extent
        weights[j + b1 - b0] = inv_extent * (f_max - b1)
        j += b1 - b0 + 1
    return first, count, weights


def balanced_chunks(count: np.ndarray, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel ranges of about equal table entries for the parallel pass: the first pixel and the
    first weight of each chunk, ``n_chunks + 1`` boundaries each."""
    ends = np.concatenate([[0], np.cumsum(count, dtype=np.int64)])
    targets = ends[-1] * np.arange(1, n_chunks) // n_chunks
    pixels = np.concatenate([[0], np.searchsorted(ends, targets, side="left"), [count.size]])
    pixels = np.maximum.accumulate(pixels)
    return pixels.astype(np.int64), ends[pixels]


@nb.njit(cache=True)
def _integrate_pixels(first: np.ndarray, count: np.ndarray, weights: np.ndarray,
                      data: np.ndarray, pixel_norm: np.ndarray, min_valid: float, p0: int, p1: int,
                      j: int, signal: np.ndarray, skipped_norm: np.ndarray,
                      skipped_weight: np.ndarray) -> None:
    """Pixels p0..p1 (their weights from ``j`` on) into the per-bin sums."""
    for idx in range(p0, p1):
        n = count[idx]
        if n == 0:
            continue
        b = first[idx]
        v = data[idx]
        if v >= min_valid:
            fv = np.float64(v)
            for k in range(n):
                signal[b + k] += weights[j + k] * fv
        else:
            pn = np.float64(pixel_norm[idx])
            for k in range(n):
                skipped_norm[b + k] += weights[j + k] * pn
                skipped_weight[b + k] += weights[j + k]
        j += n


@nb.njit(cache=True, parallel=True)
def table_integrate(first: np.ndarray, count: np.ndarray, weights: np.ndarray,
                    data: np.ndarray, pixel_norm: np.ndarray, min_valid: float, npt: int,
                    chunk_pixel: np.ndarray,
                    chunk_entry: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass of the table over the flat frame ``data`` (any numeric dtype).

    Pixels below ``min_valid`` (and NaN) are skipped. Returns per bin Σ w·data over the kept
    pixels, and Σ w·pixel_norm and Σ w over the skipped ones. The geometry's Σ w·pixel_norm and
    Σ w are fixed, so the pass reads ``pixel_norm`` only for skipped pixels. Chunks of pixels
    (``balanced_chunks``) run in parallel, each with its own per-bin sums.
    """
    n_chunks = chunk_pixel.shape[0] - 1
    sums = np.zeros((n_chunks, 3, npt))
    for c in nb.prange(n_chunks):
        _integrate_pixels(first, count, weights, data, pixel_norm, min_valid, chunk_pixel[c],
                          chunk_pixel[c + 1], chunk_entry[c], sums[c, 0], sums[c, 1], sums[c, 2])
    total = sums.sum(axis=0)
    return total[0], total[1], total[2]
