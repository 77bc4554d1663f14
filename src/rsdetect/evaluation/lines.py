"""The physics baseline: tilt of near-vertical straight lines, no learned features.

A rolling shutter reads row y at t(y) = readout * y / (H - 1). A sideways pan moves every row by a displacement
linear in y, so vertical structures lean by one consistent angle atan(shear / H); vibration or acceleration make
the displacement non-linear in y, so the lean changes with the row (curvature). The features below measure both
on the segments found by OpenCV's line segment detector; a logistic regression on them (baselines stage,
`lr_lines`) answers whether a CNN beats a detector built from straight lines.

Detector: the installed OpenCV 5.0 has a working `cv2.createLineSegmentDetector` (some 3.4 / 4.x releases
shipped it as a stub that raised for licence reasons; a test checks it runs here). LSD is preferred over HoughLinesP
on Canny edges because it needs no edge or vote thresholds,
gives sub-pixel end points (a 2 px shear over 160 rows is under 1 degree; Hough's integer lattice and angle
quantisation blur that) and, with standard refinement, splits a bent edge into straighter pieces whose tilts
then differ by row band. It is deterministic and takes about a millisecond on a 160 px image.

Tilt sign: segments are oriented top to bottom; tilt = atan2(dx, dy) in degrees, positive when the lower end is
to the right (what a rightward pan gives, since row y is drawn shifted by dx(y)).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import LineParams
from rsdetect.errors import RsdetectError

MIN_FIT_ROWS = 5  # a quadratic through fewer edge rows is not a measurement (3 would fit exactly)


def feature_names(p: LineParams) -> list[str]:
    """Names of line_features' entries, in order (the vector's layout)."""
    names = ["count", "length", "mean_tilt", "abs_mean_tilt", "std_tilt", "mean_abs_tilt", "tilted_frac"]
    edges = np.linspace(-p.max_tilt_deg, p.max_tilt_deg, p.tilt_bins + 1)
    names += [f"hist[{lo:+.1f},{hi:+.1f})" for lo, hi in zip(edges[:-1], edges[1:], strict=False)]
    for b in range(p.bands):
        names += [f"band{b}_mean_tilt", f"band{b}_mean_abs_tilt", f"band{b}_length"]
    names += [f"band_diff{b}{b + 1}" for b in range(p.bands - 1)]
    names += [f"band_curv{b}" for b in range(1, p.bands - 1)]
    names += ["curve_count", "curve_mean_abs", "curve_max_abs"]
    return names


def detect_segments(gray: np.ndarray, p: LineParams) -> np.ndarray:
    """Near-vertical segments as rows (x_top, y_top, x_bottom, y_bottom), long enough to be kept."""
    lsd = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD, p.lsd_scale)
    found = lsd.detect(gray)[0]
    if found is None:
        return np.zeros((0, 4), np.float64)
    seg = found.reshape(-1, 4).astype(np.float64)
    flip = seg[:, 3] < seg[:, 1]  # LSD orients by gradient direction; orient every segment top to bottom
    seg[flip] = seg[flip][:, [2, 3, 0, 1]]
    dx, dy = seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]
    tilt = np.degrees(np.arctan2(dx, dy))
    keep = (np.abs(tilt) <= p.max_tilt_deg) & (np.hypot(dx, dy) >= p.min_length_frac * gray.shape[0])
    return seg[keep]


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    return float((values * weights).sum() / total) if total > 0 else 0.0


def _curvatures(agx: np.ndarray, seg: np.ndarray, p: LineParams) -> np.ndarray:
    """Quadratic coefficient (px) of x fitted as a quadratic in y over each long segment's edge points.

    Edge point of a row: the |d/dx| centroid within curve_window_px of the segment's line there. With y scaled
    to [-1, 1] over the segment, the coefficient is the bow of the edge in px: about 0 for a straight (pan or
    still) edge, non-zero where the lean changes along the edge (vibration, acceleration).
    """
    h, w = agx.shape
    k = np.arange(-p.curve_window_px, p.curve_window_px + 1)
    out = []
    for x0, y0, x1, y1 in seg:
        ys = np.arange(int(np.ceil(y0)), int(np.floor(y1)) + 1)
        ys = ys[(ys >= 0) & (ys < h)]
        if ys.size < MIN_FIT_ROWS:
            continue
        line_x = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        cols = np.clip(np.rint(line_x).astype(np.int64)[:, None] + k, 0, w - 1)
        vals = agx[ys[:, None], cols]
        mass = vals.sum(1)
        ok = mass > 0
        if ok.sum() < MIN_FIT_ROWS:
            continue
        centroid = (vals[ok] * cols[ok]).sum(1) / mass[ok]
        u = (ys[ok] - (y0 + y1) / 2) / max((y1 - y0) / 2, 1.0)
        out.append(np.polyfit(u, centroid, 2)[0])
    return np.abs(np.array(out, np.float64))


def line_features(gray: np.ndarray, p: LineParams) -> np.ndarray:
    """Fixed-length tilt features of one grayscale uint8 image (layout: feature_names(p)); tilts in degrees.

    Weights are segment lengths. An image without kept segments gives count 0 and zeros elsewhere, never NaN.
    """
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    h = gray.shape[0]
    seg = detect_segments(gray, p)
    dx, dy = seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]
    length = np.hypot(dx, dy)
    tilt = np.degrees(np.arctan2(dx, dy))
    mean = _weighted_mean(tilt, length)
    std = float(np.sqrt(_weighted_mean((tilt - mean) ** 2, length)))
    total = length.sum()
    tilted = float(length[np.abs(tilt) > p.tilted_deg].sum() / total) if total > 0 else 0.0
    hist = np.histogram(tilt, p.tilt_bins, (-p.max_tilt_deg, p.max_tilt_deg), weights=length)[0]
    hist = hist / total if total > 0 else hist
    feats = [len(seg), total / h, mean, abs(mean), std, _weighted_mean(np.abs(tilt), length), tilted, *hist]

    # Per band: each segment weighs by its length inside the band (its vertical overlap, scaled to length).
    lows = np.arange(p.bands) * h / p.bands
    overlap = np.clip(np.minimum(seg[:, 3][None], (lows + h / p.bands)[:, None])
                      - np.maximum(seg[:, 1][None], lows[:, None]), 0, None)
    band_w = overlap * (length / np.maximum(dy, 1e-9))[None]  # (bands, segments)
    band_mean = np.array([_weighted_mean(tilt, wb) for wb in band_w])
    has = band_w.sum(1) > 0
    for b in range(p.bands):
        feats += [band_mean[b], _weighted_mean(np.abs(tilt), band_w[b]), band_w[b].sum() / h]
    # A difference needs segments in both bands: an empty band's 0 is "unknown", not "upright".
    feats += [abs(band_mean[b + 1] - band_mean[b]) if has[b] and has[b + 1] else 0.0 for b in range(p.bands - 1)]
    feats += [abs(band_mean[b - 1] - 2 * band_mean[b] + band_mean[b + 1]) if has[b - 1:b + 2].all() else 0.0
              for b in range(1, p.bands - 1)]

    long_seg = seg[length >= p.curve_min_length_frac * h]
    gradient_x = np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3))
    curv = _curvatures(gradient_x, long_seg, p) if len(long_seg) else np.zeros(0)
    feats += [curv.size, float(curv.mean()) if curv.size else 0.0, float(curv.max()) if curv.size else 0.0]
    return np.asarray(feats, np.float64)


def line_features_of_paths(paths: Sequence[str | Path], p: LineParams) -> np.ndarray:
    """line_features of each image file (read as grayscale), one row per path; RsdetectError if one is unreadable."""
    out = np.zeros((len(paths), len(feature_names(p))), np.float64)
    for i, path in enumerate(paths):
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise RsdetectError(f"{path}: cannot read image (missing, unreadable or not an image)")
        out[i] = line_features(img, p)
    return out
