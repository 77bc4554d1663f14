"""The shear of a flagged frame, for the correction step: how far the bottom row is displaced sideways from the top
row (px across the frame height, signed: > 0 when the lower rows sit to the right), and a de-skewed preview.

Method (no learning, any model format): a rolling shutter under a sideways pan leans every vertical edge by one
angle, atan(shear / H) (rsdetect.evaluation.lines). Every pixel on an edge of slope k (x = x0 + k*y) has its gradient
perpendicular to the edge, gx*k + gy = 0, so each strong near-vertical gradient pixel votes k = -gy/gx; the
estimate is the median vote weighted by squared gradient magnitude, and shear = H * k.

Chosen on data/synth's val split, measured on its test split (576 images, 160 px; `evaluate` reports it each
run): this dense vote (with a 3x3 Sobel) against the length-weighted median tilt of LSD segments
(rsdetect.evaluation.lines.detect_segments, baselines.lines params) gave RS-sample MAE 6.99 vs 7.82 px (pan 3.25
vs 3.70, vibration 4.34 vs 6.80, object 11.34 vs 11.43), mean |estimate| on the global-shutter twins 1.39 vs 3.13 px,
pan sign right 92% vs 90%, at 0.9 vs 2.1 ms per image; with Scharr gradients (below) MAE 6.73 (pan 2.59). A person's
shear is local, so a whole-frame estimate underrates it: the object MAE (11.3) is near the objects' mean shear
(13.4 px); pans are what the estimate is good for. (Always guessing the median shear, 12 px, would score MAE 4.7 on
RS samples overall, but says nothing about a given frame; pan MAE is the number that matters for correction.)
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import cv2
import numpy as np

from rsdetect.config import ShearParams
from rsdetect.preprocess import decode, resize_short_side
from rsdetect.shutter import warp_rows


def edge_slope(gray: np.ndarray, p: ShearParams) -> float | None:
    """dx/dy of the image's near-vertical edges (> 0: lower ends lean right); None where it has none."""
    g = gray.astype(np.float32)
    # Scharr, not a 3x3 Sobel: Sobel's gradient direction is biased toward the axes, so it read a 24 px pan of
    # vertical bars as 22.1 px (Scharr 26.3); on data/synth's val split pan MAE 4.02 px (Sobel) vs 3.47 (Scharr).
    gx = cv2.Scharr(g, cv2.CV_32F, 1, 0)
    gy = cv2.Scharr(g, cv2.CV_32F, 0, 1)
    mag = gx * gx + gy * gy
    sel = (np.abs(gy) <= math.tan(math.radians(p.max_tilt_deg)) * np.abs(gx)) & (gx != 0)
    sel &= mag >= np.quantile(mag, p.gradient_quantile)
    if not sel.any():
        return None
    votes, weights = -gy[sel] / gx[sel], mag[sel]
    order = np.argsort(votes, kind="stable")
    cum = np.cumsum(weights[order], dtype=np.float64)
    return float(votes[order][np.searchsorted(cum, cum[-1] / 2)])


def estimate_shear(rgb: np.ndarray, p: ShearParams, size: int | None = None) -> float | None:
    """Signed shear (px across the frame's height) of an RGB or grayscale frame; None without near-vertical edges.

    `size`: measure at the model's scale (short side resized to it, as the frame is scored): the slope does not
    depend on scale, and the params were chosen on 160 px images, where a 4K frame's sensor noise is averaged away.
    """
    small = resize_short_side(rgb, size) if size else rgb
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) if small.ndim == 3 else small
    slope = edge_slope(gray, p)
    return None if slope is None else rgb.shape[0] * slope


def shear_direction(shear: float | None) -> str | None:
    """Which way the lower rows are displaced from the upper ones: "right", "left", or None (none measured)."""
    if shear is None or shear == 0:
        return None
    return "right" if shear > 0 else "left"


def deskew(rgb: np.ndarray, shear: float) -> np.ndarray:
    """The frame with the estimated shear undone: row y moved back by shear * (y / (H-1) - 1/2) (cv2.remap through
    shutter.warp_rows), so the middle row stays put and vertical edges stand upright again."""
    h = rgb.shape[0]
    dx = shear * (np.arange(h, dtype=np.float64) / max(h - 1, 1) - 0.5)
    return warp_rows(rgb, -dx, np.zeros(h), border=cv2.BORDER_REPLICATE)


def estimate_paths(paths: Sequence[str | os.PathLike], p: ShearParams) -> np.ndarray:
    """estimate_shear of each image file (as it is: synthesized images are at the model's scale); NaN where an
    image has no near-vertical edge. RsdetectError names an unreadable file."""
    out = np.full(len(paths), np.nan)
    for i, path in enumerate(paths):
        s = estimate_shear(decode(path), p)
        if s is not None:
            out[i] = s
    return out
