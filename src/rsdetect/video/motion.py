"""Image motion between consecutive frames: the camera's own motion per horizontal band, and the moving regions.

Each frame is measured against the one before at video.analysis.work_width (grey, INTER_AREA: the shrink also
averages sensor noise away). A cheap frame difference decides first whether anything moved at all: a frame where
fewer than static_fraction of the pixels changed by more than static_level is static, gets no flow and cannot show
rolling-shutter distortion. Otherwise OpenCV's DIS optical flow (preset FAST) gives a dense field; the background's
displacement per horizontal band is the band's median flow over the textured pixels that move with it (a first median, then
pixels more than mover_px off it are left out as movers and the median taken again), in both axes: the row
dependence that a shake or a pan leaves is kept per band instead of averaged over the frame. Pixels off their band's
background are moving regions (connected components), each with its own velocity and height.

Every length reported is in native px of the frame (the working scale is undone).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from rsdetect.config import VideoAnalysisParams

OPEN_KERNEL = np.ones((3, 3), np.uint8)
GRADIENT_KERNEL = np.ones((3, 3), np.uint8)  # texture: the grey range of each pixel's 3x3 neighbourhood
REGION_SPEED_QUANTILE = 0.9  # a flat 60x200 px box at 8 px/frame: its tall edge regions read 2.7-5.0 by the median, 5.7-7.3 by this
MIN_TEXTURED = 0.02  # a band needs 2% textured pixels to be measured (a few hundred pixels at 320 px width)  # opening removes isolated flow outliers before regions are counted


@dataclass
class FrameMotion:
    """What moved between the frame before and this one (native px per frame)."""
    index: int
    static: bool
    bands: np.ndarray | None = None        # (bands, 2): background displacement (dx, dy) of each band
    band_spread: float = 0.0               # median absolute deviation of the flow around the band medians
    regions: list[dict] = field(default_factory=list)  # moving regions: x, y, w, h, vx, vy (relative), speed_px
    motion_px: float = 0.0                 # largest image speed: the background's or a region's

    @property
    def camera_px(self) -> float:
        """The background's speed at mid-frame: the camera's own motion."""
        return 0.0 if self.bands is None else float(np.hypot(*np.nanmedian(self.bands, axis=0)))


class MotionMeter:
    """Measures each pushed frame against the previous one; bounded memory (one small grey frame)."""

    def __init__(self, p: VideoAnalysisParams):
        self.p = p
        self.prev: np.ndarray | None = None
        self.index = -1
        self.scale = 1.0
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)

    def small(self, frame: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        h, w = grey.shape
        width = min(self.p.work_width, w)
        self.scale = w / width
        return cv2.resize(grey, (width, max(1, round(h / self.scale))), interpolation=cv2.INTER_AREA)

    def push(self, frame: np.ndarray) -> FrameMotion:
        cur = self.small(frame)
        prev, self.prev = self.prev, cur
        self.index += 1
        if prev is None or prev.shape != cur.shape:
            return FrameMotion(self.index, static=True)  # nothing to compare with: no motion can be shown
        changed = cv2.countNonZero(cv2.threshold(cv2.absdiff(prev, cur), self.p.static_level, 255,
                                                 cv2.THRESH_BINARY)[1])
        if changed <= self.p.static_fraction * cur.size:
            return FrameMotion(self.index, static=True)
        flow = self.dis.calc(prev, cur, None) * self.scale  # native px
        return self.measure(flow, cv2.morphologyEx(prev, cv2.MORPH_GRADIENT, GRADIENT_KERNEL) > self.p.texture_level)

    def measure(self, flow: np.ndarray, textured: np.ndarray) -> FrameMotion:
        """Band medians over textured pixels (flow on a flat wall is whatever the solver's smoothing makes of
        its surroundings); a band with too little texture is NaN, left out of every fit downstream."""
        p = self.p
        h = flow.shape[0]
        edges = np.linspace(0, h, p.bands + 1).round().astype(int)
        bands = np.full((p.bands, 2), np.nan)
        moving = np.zeros(flow.shape[:2], np.uint8)
        spreads = []
        for b in range(p.bands):
            rows = slice(edges[b], edges[b + 1])
            f = flow[rows][textured[rows]]
            if len(f) < MIN_TEXTURED * textured[rows].size:
                continue
            first = np.median(f, axis=0)
            off = np.abs(f - first).max(axis=1) > p.mover_px
            keep = f[~off] if (~off).sum() > off.size // 4 else f  # a band mostly covered by movers: keep all
            bands[b] = np.median(keep, axis=0)
            spreads.append(np.median(np.abs(keep - bands[b])))
            moving[rows] = ((np.abs(flow[rows] - bands[b]).max(axis=2) > p.mover_px) & textured[rows]).astype(np.uint8)
        regions = self.regions(cv2.morphologyEx(moving, cv2.MORPH_OPEN, OPEN_KERNEL), flow, bands, edges)
        if not spreads:  # no texture anywhere: nothing can be measured, as if static
            return FrameMotion(self.index, static=True)
        camera = float(np.hypot(*np.nanmedian(bands, axis=0)))
        motion = max([camera] + [r["speed_px"] + camera for r in regions])
        return FrameMotion(self.index, static=False, bands=bands, band_spread=float(np.median(spreads)),
                           regions=regions, motion_px=motion)

    def regions(self, mask: np.ndarray, flow: np.ndarray, bands: np.ndarray, edges: np.ndarray) -> list[dict]:
        """Connected moving regions of at least min_region_fraction of the frame: box, relative velocity, native px."""
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        band_of_row = np.searchsorted(edges, np.arange(flow.shape[0]), side="right") - 1
        bands = np.where(np.isnan(bands), np.nanmedian(bands, axis=0), bands)  # untextured band: the frame's motion
        out = []
        for i in range(1, n):
            x, y, w, h, area = stats[i]
            if area < self.p.min_region_fraction * mask.size:
                continue
            ys, xs = np.nonzero(labels[y:y + h, x:x + w] == i)
            rel = flow[y + ys, x + xs] - bands[band_of_row[y + ys]]
            vx, vy = np.median(rel, axis=0)
            # speed: a high quantile, not the median: inside a flat-coloured mover the flow is smoothed towards
            # the background (aperture), only its textured edges move at its true speed
            speed = float(np.quantile(np.hypot(rel[:, 0], rel[:, 1]), REGION_SPEED_QUANTILE))
            s = self.scale
            out.append({"x": int(x * s), "y": int(y * s), "w": int(w * s), "h": int(h * s),
                        "vx": float(vx), "vy": float(vy), "speed_px": speed})
        return out
