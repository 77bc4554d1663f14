"""Image motion between consecutive frames: the camera's own motion per horizontal band, and the moving regions.

Each frame is measured against the one before at video.analysis.work_width (grey, INTER_AREA: the shrink also
averages sensor noise away), in the previous frame's light where a gain per row explains half of what changed
(`lighting`: flicker read row by row, an exposure step). A cheap frame difference decides first whether anything
moved at all: a frame where
fewer than static_fraction of the pixels changed by more than static_level is static, gets no flow and cannot show
rolling-shutter distortion. Otherwise OpenCV's DIS optical flow gives a dense field: first with the cheap
quick_preset, which is enough to find movers and to see that the camera stands still (a fixed camera's every
frame); where the background moves, again with flow_preset, whose precision the readout fit needs (measured on
the video stage's 32 clips: ULTRAFAST for every frame lowered the not-told camera frame ROC AUC from 0.90 to 0.88
and put fewer readouts within 25%: 0.50 against 0.62); the background's
displacement per horizontal band is the band's median flow over the pixels that move with it (a first median, then
pixels more than mover_work_px off it are left out as movers and the median taken again), in both axes: the row
dependence that a shake or a pan leaves is kept per band instead of averaged over the frame, less the row dependence
of the camera's roll and zoom, which every shutter shows (column_slopes: measured by their column dependence, which
no readout gives). Pixels off their band's
background are moving regions (connected components), each with its own velocity and height. What the camera's
motion leaves still on the sensor (an on-screen clock: `MotionMeter.overlay`) is learnt and left out of both.

Every length reported is in native px of the frame (the working scale is undone).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from rsdetect.config import VideoAnalysisParams
from rsdetect.video.readout import band_centres

OPEN_KERNEL = np.ones((3, 3), np.uint8)  # opening removes isolated flow outliers before regions are counted
# a flat 60x200 px box at 8 px/frame: its tall edge regions read 2.7-5.0 by the median, 5.7-7.3 by this
REGION_SPEED_QUANTILE = 0.9
FLOW_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
ROLL_REFITS = 4  # a large roll's slope refitted at most this often (MotionMeter.measure): it settles in 2-3
ROLL_REFIT_SHARE = 0.25  # ... once it moves the side columns by this share of mover_work_px (noise then crosses it)
ROLL_SETTLED = 0.02  # ... until a refit changes it by under this share of its size
STAT_STEP = 4  # bands and regions from every 4th flow pixel each way (DIS: one patch per 4-6 px): measured on
# the video stage, 2 -> 4 changed no readout estimate and no ROC AUC by more than 0.005, and cut the stage 23%


@dataclass
class FrameMotion:
    """What moved between the frame before and this one (native px per frame)."""
    index: int
    static: bool
    bands: np.ndarray | None = None        # (bands, 2): background displacement (dx, dy) of each band
    # moving regions: x, y, w, h, vx, vy (relative), speed_px (native px), mask (its pixels in the box, coarse)
    regions: list[dict] = field(default_factory=list)
    motion_px: float = 0.0                 # largest image speed: the background's or a region's
    camera_moving: bool = False            # the background moved more than camera_work_px (working px)
    texture: np.ndarray | None = None      # (bands,): mean squared grey gradient of each band, where the camera moved
    # (rows of the quick flow's level,): log of each row's gain into the previous frame's light, where the frame was
    # measured in it (`lighting`): the lights' flicker read row by row, a fixed camera's readout (video/flicker.py)
    flicker: np.ndarray | None = None
    # the roll or zoom (the larger) at the top and bottom sampled rows, working px, dead zone or not; and (bands, 2)
    # the row dependence of it that the dead zone left in the bands (None: taken out whole)
    roll_work_px: float = 0.0
    unturned: np.ndarray | None = None

    @property
    def camera_px(self) -> float:
        """The background's speed at mid-frame: the camera's own motion."""
        if self.bands is None:
            return 0.0
        # the bands measured (a band crowded out by movers is NaN); not np.nanmedian, which on a few values goes
        # through numpy.ma at ~0.4 ms a call: a quarter of a 320x240 frame's measurement (profiled on real footage)
        seen = self.bands[~np.isnan(self.bands).any(axis=1)]
        return float(np.hypot(*median(seen, 0))) if len(seen) else 0.0


def median(values: np.ndarray, axis: int) -> np.ndarray:
    """np.median along `axis` (the mean of the two middle values), by one np.partition: np.median's own wrapper
    costs ~70 us a call, most of a small band's or region's statistics (line-profiled on the road footage)."""
    n = values.shape[axis]
    part = np.partition(values, [(n - 1) // 2, n // 2], axis=axis)
    return (part.take((n - 1) // 2, axis=axis) + part.take(n // 2, axis=axis)) / 2


def quantile(values: np.ndarray, q: float) -> float:
    """np.quantile(values, q) of a 1-d array (linear interpolation), by one np.partition (np.quantile: ~180 us)."""
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    part = np.partition(values, [lo, hi])
    return float(part[lo] + (pos - lo) * (part[hi] - part[lo]))


def column_slopes(samples: np.ndarray, bands: np.ndarray, off: np.ndarray, width: int) -> np.ndarray:
    """(zoom, roll): the background's displacement per flow px of column, dx and dy, fitted (least squares) to the
    samples (bands, rows x width, 2) that move with their band (not `off`), about each band's median.

    A rolling shutter reads rows at different times, never columns: it gives the background's displacement no
    column dependence. A camera turning about its optical axis (roll) or zooming does, and gives every shutter a
    row dependence as well, which the readout fit would take for a readout: measured, global-shutter cameras
    shaking with 0.3-1.2 degrees of roll (1-4 px at the edges) got estimated readouts of 14-28 ms and most of their
    frames flagged (experiments/roll_shake.py). Their column dependence measures them, and so their row
    dependence (how much of it is taken out: `dead_zone`)."""
    column = sample_columns(samples, width)[..., 0]
    keep = ~off
    spread = float((keep * column * column).sum())
    if spread <= 0:
        return np.zeros(2)
    centred = samples - bands[:, None, :]
    return np.array([(keep * column * centred[..., k]).sum() / spread for k in (0, 1)])


def sample_columns(samples: np.ndarray, width: int) -> np.ndarray:
    """(1, rows x width, 1): each band sample's column about the middle (flow px): the lever of a roll or zoom."""
    return (np.arange(samples.shape[1]) % width - (width - 1) / 2)[None, :, None]


def dead_zone(slopes: np.ndarray, dead: float) -> np.ndarray:
    """`slopes` less `dead` each (none where under it): a camera not known to roll keeps the row dependence of a
    slope within flow's own column structure (video.analysis.roll_dead_work_px: why, in params.yaml)."""
    return np.sign(slopes) * np.maximum(np.abs(slopes) - dead, 0.0)


def off_background(flow: np.ndarray, background: np.ndarray, limit: float) -> np.ndarray:
    """Where the flow differs from the background by more than `limit` in x or in y (per channel: no (.., 2)
    temporary, 2x faster than np.abs(flow - background).any(axis=-1))."""
    dx = np.abs(flow[..., 0] - background[..., 0])
    return np.maximum(dx, np.abs(flow[..., 1] - background[..., 1]), out=dx) > limit


def masked_median(values: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Per-row median of values (rows, n, 2) over the entries not `off` (rows, n), NaN for a row with none: one
    sort with the left-out entries pushed to the end (np.nanmedian: the same result, slower, and a warning)."""
    ranked = np.sort(np.where(off[..., None], np.inf, values), axis=1)
    count = (~off).sum(axis=1)
    rows = np.arange(len(values))
    lo = ranked[rows, np.maximum(count - 1, 0) // 2]
    hi = ranked[rows, np.minimum(count // 2, values.shape[1] - 1)]
    return np.where((count > 0)[:, None], (lo + hi) / 2, np.nan)


class Flow:
    """DIS optical flow of one preset, computed on the preset's finest pyramid level directly.

    DIS works from its coarsest level down to its finest scale (ULTRAFAST and FAST: a quarter of the image's width,
    MEDIUM: half) and then only upsamples that level's flow to the full image. Given the image already shrunk to
    that level (INTER_AREA, as DIS builds its pyramid) with finest scale 0, it computes the same flow (same levels:
    the coarsest scale follows the image size) without the upsampling and its full-size output: on the real
    320x240 road footage ULTRAFAST took 0.45 ms a frame pair against 0.80-1.28 ms, and the flow differed from the
    upsampled one by a median 0.002 native px. `calc` returns the flow (work px) and its grid (work px per flow
    px)."""

    def __init__(self, preset: str):
        self.dis = cv2.DISOpticalFlow.create(FLOW_PRESETS[preset])
        self.grid = 2 ** self.dis.getFinestScale()
        self.dis.setFinestScale(0)
        self.last: tuple[np.ndarray, np.ndarray] | None = None  # the last image shrunk, and its level: the next prev

    def rows(self, height: int) -> int:
        """The rows of `level` for an image `height` rows tall."""
        return height if self.grid == 1 else max(1, height // self.grid)

    def level(self, grey: np.ndarray) -> np.ndarray:
        if self.grid == 1:
            return grey
        if self.last is not None and self.last[0] is grey:
            return self.last[1]
        h, w = grey.shape
        small = cv2.resize(grey, (max(1, w // self.grid), self.rows(h)), interpolation=cv2.INTER_AREA)
        self.last = (grey, small)
        return small

    def calc(self, prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, int]:
        # No typed call exists: OpenCV's stubs make calc's output `flow` a required array, but its bindings take
        # None for any output (allocate it), and a preallocated array is not the same call: DIS reads what is in it
        # (NaN there crashed OpenCV 5.0).
        flow = self.dis.calc(self.level(prev), self.level(cur), None)  # type: ignore[call-overload]
        return flow * np.float32(self.grid), self.grid


def band_rows(h: int, bands: int) -> np.ndarray:
    """Rows (of `h`) for `bands` bands of h // bands rows each, spread evenly over all h: band b's centre is the
    frame's (b + 0.5) / bands, where the readout fit reads it (readout.band_centres).

    Taking the first h // bands x bands rows instead left the frame's last rows out and put every band's centre
    higher than the fit assumed: on a 213-row working image (a 448 x 299 crop of a real photo; the flow sampled at
    53 rows, 48 used) the row times were 10% too spread, and the readouts of pans came out ~10% low
    (experiments/unseen_recheck.py)."""
    per = h // bands
    return ((np.arange(per * bands) + 0.5) * h / (per * bands)).astype(int)


def band_of_rows(h: int, bands: int) -> np.ndarray:
    """The band each of h rows belongs to: the one whose share of the frame holds the row's centre (the rows
    band_rows picks for a band are all its own)."""
    return np.minimum(((np.arange(h) + 0.5) * bands / h).astype(int), bands - 1)


def band_texture(grey: np.ndarray, bands: int, leave_out: np.ndarray | None = None) -> np.ndarray:
    """(bands,): the mean squared grey-level gradient of each horizontal band (Sobel, per px) of the working image.

    How precisely a band's displacement can be measured: a translation's error variance goes as the noise over the
    band's gradient energy (the Cramer-Rao bound of image registration). A flat band (sky, a blank wall) has its
    flow made up by the solver, and what stays put in it rules it: a sensor's fixed-pattern noise, or a codec that
    skips a flat block and copies the previous frame's until it jumps. Such a band lags the camera, and the readout
    fit read the lag as a readout: a global-shutter camera shaking under a flat sky got 25 ms and most frames
    flagged (tests/test_video_analysis.py); the stage's shakes at 1280 px through MPEG-4, 16-23 ms
    (experiments/wide_frames.py --codec mp4v). The readout fit weighs bands by it (readout.band_weights); measured
    on the working image also where the motion is measured finer (only the bands' ratios count). `leave_out`: a
    mask (any size) of what is no part of the scene (MotionMeter.overlay: an on-screen clock's sharp text would
    weigh its band up)."""
    g = grey.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    pick = band_rows(g.shape[0], bands)
    energy = (gx * gx + gy * gy)[pick]
    if leave_out is None:
        return energy.reshape(bands, -1).mean(axis=1)
    keep = cv2.resize((~leave_out).view(np.uint8), g.shape[::-1], interpolation=cv2.INTER_NEAREST)[pick]
    kept = keep.reshape(bands, -1).sum(axis=1)
    return (energy * keep).reshape(bands, -1).sum(axis=1) / np.maximum(kept, 1)


def lighting(prev: np.ndarray, cur: np.ndarray, changed: np.ndarray, level: Callable[[np.ndarray], np.ndarray]
             ) -> np.ndarray | None:
    """The gain of each row of `cur` (at `level`'s resolution) that puts it in `prev`'s light, or None where no row
    has most of its pixels `changed` (the static test's mask: where no gain can matter).

    Lights on the mains flicker at twice its frequency, and a rolling shutter reads each row at its own time: each
    row gets its own gain, I_k(x, y) = S(x, y) g_k(y), in bands that drift from frame to frame unless the frame rate
    divides the flicker's (100 Hz at 25 fps does; at 12, 15 or 30 fps, or 120 Hz at 25, it does not). The drifting
    bands moved as the flow saw it: a fixed camera over a still scene under 10% and 30% flicker was read as moving
    up to 11 and 52 px/frame, and told its readout, had 21 and 39 of its 40 frames flagged; a walker under it, the
    camera moving (tests/test_video_analysis.py::test_flicker_read_row_by_row_is_not_motion). A gain is the
    same along a row, which motion's change is not: the row's median ratio of the two frames, robust to movers
    under half the row's width, on the quick flow's level (a quarter of the working image for ultrafast: the
    flicker's bands are many rows tall). A gain that matters changes most of its row; movers seldom do (on the real
    road footage cars left 93% of frames with a row mean off by the static level, but rarely half a row changed),
    so only then is the gain measured. An exposure step is such a gain too."""
    per_row = cv2.reduce(changed, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)
    if not (per_row > 255 * changed.shape[1] // 2).any():
        return None
    return row_gain(prev, cur, level)


def row_gain(prev: np.ndarray, cur: np.ndarray, level: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Each row's median ratio of `prev` to `cur` at `level`'s resolution: the gain that puts `cur` in `prev`'s light
    (robust to movers under half the row's width)."""
    return median((level(prev).astype(np.float32) + 1.0) / (level(cur).astype(np.float32) + 1.0), 1)


def mean_row_gain(prev: np.ndarray, cur: np.ndarray, rows: int) -> np.ndarray:
    """row_gain of a frame where nothing changed (no mover to be robust to): the ratio of the row means, area-averaged
    to `rows` rows (the quick flow's level, as row_gain's): ~20 us against row_gain's ~90 us at 320x240."""
    def means(grey: np.ndarray) -> np.ndarray:  # (a sum to int32 is the cheapest reduce: ~9 us at 320x240)
        per_row = cv2.reduce(grey, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).astype(np.float32) / grey.shape[1]
        return cv2.resize(per_row, (1, rows), interpolation=cv2.INTER_AREA).ravel()
    return (means(prev) + 1.0) / (means(cur) + 1.0)


def relit(grey: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """`grey` with each row scaled by `gain` (lighting: its rows at any resolution, interpolated)."""
    h = grey.shape[0]
    rows = np.interp((np.arange(h) + 0.5) * len(gain) / h - 0.5, np.arange(len(gain)), gain).astype(np.float32)
    return cv2.convertScaleAbs(grey.astype(np.float32) * rows[:, None])


def shrink(grey: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """The grey frame at `width` (no wider than it is; INTER_AREA) and its native px per px.

    Halved first (INTER_AREA, exactly 2x) while it is at least twice as wide: OpenCV's area resize has a vectorised
    path for exactly 2x only, and its general one cost 0.31 ms for a 1280x720 frame to 320x180 (the fixed camera's
    every frame, a tenth of its analysis) against 0.05 ms halved twice, within one grey level of it (the same 4x4 box
    but for rounding). Each halving is the area average its 2x step is, so the composite is an area average too.
    (preprocess.shrink halves the same way but ends with a linear step, as the model's training images were made:
    the motion is measured on area averages, which average sensor noise away.)"""
    h, w = grey.shape
    width = min(width, w)
    scale = w / width
    size = (width, max(1, round(h / scale)))
    while (grey.shape[1] >= 2 * width and grey.shape[0] >= 2 * size[1]
           and grey.shape[1] % 2 == 0 and grey.shape[0] % 2 == 0):
        grey = cv2.resize(grey, (grey.shape[1] // 2, grey.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if grey.shape[::-1] != size:
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return grey, scale


class MotionMeter:
    """Measures each pushed frame against the previous one; bounded memory (the previous frame in grey, and per
    flow sample a count of the frames its motion was held still in: `overlay`)."""

    def __init__(self, p: VideoAnalysisParams):
        self.p = p
        self.prev: tuple[np.ndarray, np.ndarray] | None = None  # the previous frame: grey, and at work_width
        self.index = -1
        self.dis = Flow(p.flow_preset)
        self.quick = self.dis if p.quick_preset == p.flow_preset else Flow(p.quick_preset)
        # what stays put on the sensor while the camera moves (an on-screen clock, a watermark, the mount): per flow
        # sample, the frames of camera motion it was held still in, and how many those were
        self.held: np.ndarray | None = None
        self.moved = 0
        self.grown: np.ndarray | None = None  # the overlay on the counts' grid, from the counts at the last learn()
        # frames in a row the camera was measured still (static ones included); taken as still until seen moving
        self.still_for = p.static_after_still_frames
        self.last: tuple[np.ndarray, float] | None = None  # the last measure's flow samples and camera speed
        # whether the camera's readout is still wanted (unknown, not configured: CameraAnalyzer says): then even
        # faint flicker's row gains are sampled (`push`)
        self.flicker_wanted = False
        # whether the camera is known to roll or zoom as it moves: its slopes taken out whole (CameraAnalyzer says)
        self.rolls = False
        reach = max(1, self.dis.dis.getPatchSize() * self.dis.grid // (2 * STAT_STEP))  # half a patch, in samples
        self.grow = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)

    def precise_width(self, width: int) -> int:
        """The width the camera's motion is measured at where it moves: work_width, or more for a frame over
        precise_max_shrink times wider (a 1-4 px shake of a 1920 px frame is 0.2-0.7 px at 320)."""
        return min(width, max(self.p.work_width, -(-width // self.p.precise_max_shrink)))

    def push(self, frame: np.ndarray) -> FrameMotion:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame  # RGB, as readers give it
        cur, scale = shrink(grey, self.p.work_width)
        prev, self.prev = self.prev, (grey, cur)
        self.index += 1
        if prev is None or prev[1].shape != cur.shape:
            return FrameMotion(self.index, static=True)  # nothing to compare with: no motion can be shown
        mask = self.changed(prev[1], cur)
        changed = cv2.countNonZero(mask)
        # measured in the previous frame's light: flicker and exposure are not motion
        gain = lighting(prev[1], cur, mask, self.quick.level) if changed else None
        if gain is not None:
            lit = relit(cur, gain)
            lit_changed = cv2.countNonZero(self.changed(prev[1], lit))
            # kept where it explains half of what changed (video.analysis.lighting_explains: why, in params.yaml)
            if lit_changed <= (1.0 - self.p.lighting_explains) * changed:
                cur, changed = lit, lit_changed
            else:
                gain = None
        # static: nothing changed, and the camera has stood still for static_after_still_frames (a shake's reversal
        # changes few pixels while its rows still move apart: video.analysis.static_after_still_frames, in params.yaml)
        flicker = None if gain is None else np.log(gain)
        if (flicker is None and self.flicker_wanted and self.index % self.p.flicker_every == 0
                and self.still_for >= self.p.static_after_still_frames):
            # flicker too faint for lighting() to take out (no row mostly changed), on a camera that stands still
            # (its movers: under half a row): measured, not applied, every flicker_every frames while the camera's
            # readout is unknown (video/flicker.py reads the readout off it)
            flicker = np.log(row_gain(prev[1], cur, self.quick.level) if changed
                             else mean_row_gain(prev[1], cur, self.quick.rows(cur.shape[0])))
        if changed <= self.p.static_fraction * cur.size and self.still_for >= self.p.static_after_still_frames:
            self.still_for += 1
            return FrameMotion(self.index, static=True, flicker=flicker)
        # a camera that moved within static_after_still_frames is measured as a moving one: its slow frames (a
        # shake's reversal) carry the row dependence its readout is read from, with the precision and the band
        # weights that needs
        fm = self.flowed(prev, grey, cur, gain, scale, self.still_for < self.p.static_after_still_frames)
        self.still_for = 0 if fm.camera_moving else self.still_for + 1
        fm.flicker = flicker
        return fm

    def flowed(self, prev: tuple[np.ndarray, np.ndarray], grey: np.ndarray, cur: np.ndarray,
               gain: np.ndarray | None, scale: float, recent: bool) -> FrameMotion:
        """The frame's motion by dense flow: the quick pass, and the precise one where the camera moves or moved
        `recent`ly."""
        first = self.measure(*self.quick.calc(prev[1], cur), scale)
        width = self.precise_width(grey.shape[1])
        if width == cur.shape[1]:
            if not (first.camera_moving or recent) or self.quick is self.dis:
                return self.textured(first, cur, recent)
            # the camera moves: its row dependence needs precision
            return self.textured(self.measure(*self.dis.calc(prev[1], cur), scale), cur, recent)
        fine = grey.shape[1] / width  # native px per px of the precise pass
        if first.camera_px <= self.p.camera_work_px * fine and not recent:
            return first  # the camera stands still by the precise pass's own measure, as the quick one sees it
        finer = shrink(grey if gain is None else relit(grey, gain), width)[0]  # native size: relit only here
        return self.textured(self.measure(*self.dis.calc(shrink(prev[0], width)[0], finer), fine), cur, recent)

    def textured(self, fm: FrameMotion, cur: np.ndarray, recent: bool) -> FrameMotion:
        """`fm`, a frame's last measure, with its bands' texture where the camera moves or moved `recent`ly (the
        readout fit's band weights); what its flow held still while the camera moved is learnt (`overlay`)."""
        if fm.camera_moving or recent:
            fm.texture = band_texture(cur, self.p.bands, self.grown)
        if fm.camera_moving:
            self.learn()
        return fm

    def learn(self) -> None:
        """Count the flow samples of the last measure that the camera's motion left still (under overlay_held of
        the camera's speed: not of their band's, which a band held whole shares)."""
        assert self.last is not None
        flow, camera = self.last
        held = (np.hypot(flow[..., 0], flow[..., 1]) < self.p.overlay_held * camera).view(np.uint8)
        if self.held is None:
            self.held = np.zeros(held.shape, np.float32)
        elif held.shape != self.held.shape:  # measured finer (a wide frame): counted on the first grid
            held = cv2.resize(held, self.held.shape[::-1], interpolation=cv2.INTER_NEAREST)
        self.held += held
        self.moved += 1
        self.grown = None
        if self.moved >= self.p.min_evidence_frames:
            overlay = (self.held >= self.p.overlay_share * self.moved).view(np.uint8)
            if overlay.any():
                self.grown = cv2.dilate(overlay, self.grow).astype(bool)

    def overlay(self, shape: tuple[int, int]) -> np.ndarray | None:
        """Flow samples (of a grid `shape`) held still in at least overlay_share of the frames the camera moved in,
        once min_evidence_frames such frames were seen, grown by half the precise flow's patch (the flow around
        them is held back too: not grown, the clock's band still lagged); None where there are none.

        Surveillance footage carries an on-screen clock and a camera name, drawn after the readout; they stay put
        while the camera shakes. Wide text (a date and time across most of a band) made that band's median flow the
        text's: the band lagged the camera and a shaking rolling-shutter camera's readout came out 27.9 ms (20 ms
        without the text). Left out of the bands, their texture and the moving regions, it reads 20.2 ms
        (tests/test_video_analysis.py::test_an_on_screen_clock_does_not_hide_a_shaking_cameras_readout)."""
        if self.grown is None or self.grown.shape == shape:
            return self.grown
        return cv2.resize(self.grown.view(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)

    def changed(self, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """255 where a pixel changed by more than static_level, else 0."""
        return cv2.threshold(cv2.absdiff(prev, cur), self.p.static_level, 255, cv2.THRESH_BINARY)[1]

    def measure(self, flow: np.ndarray, grid: int, scale: float) -> FrameMotion:
        """Band medians of the flow (work px, `grid` work px per flow px, `scale` native px per work px), movers
        left out, and the moving regions, both on every STAT_STEP-th work pixel each way (DIS's flow is smooth at
        that scale anyway: one 8x8 patch per 4 px)."""
        p = self.p
        step = max(1, STAT_STEP // grid)
        flow = flow[::step, ::step]
        h, w = flow.shape[:2]
        pick = band_rows(h, p.bands)
        samples = flow[pick].reshape(p.bands, -1, 2)
        over = self.overlay((h, w))
        if over is None:
            first = median(samples, 1)
            off = off_background(samples, first[:, None], p.mover_work_px)
        else:  # an overlay (an on-screen clock) is no part of the background, whatever it covers of a band
            held = over[pick].reshape(p.bands, -1)
            first = masked_median(samples, held)
            first = np.where(np.isnan(first), median(samples, 1), first)
            off = off_background(samples, first[:, None], p.mover_work_px) | held
        bands = masked_median(samples, off)
        crowded = (~off).sum(axis=1) <= off.shape[1] // 4  # a band mostly covered by movers: its plain median
        bands[crowded] = first[crowded]
        if over is not None:  # a band the overlay covers whole is not measured
            bands[held.all(axis=1)] = np.nan
        band_of_row = band_of_rows(h, p.bands)
        measured = np.nan_to_num(bands)  # (a NaN band is all off)
        slopes = column_slopes(samples, measured, off, w)
        for _ in range(ROLL_REFITS):
            if np.abs(slopes).max() * (w - 1) / 2 <= ROLL_REFIT_SHARE * p.mover_work_px:
                break
            # A roll (or zoom) this large moves the side columns' background far from its band's median: the side
            # samples whose noise took them past mover_work_px were left out as movers, and the slope came out short
            # (a real 3 px roll 10-20% short, and its global-shutter twin's readout 12 ms: the rest of the roll's row
            # dependence). Again, the movers told from the background with its column dependence, until it settles.
            off = off_background(samples, measured[:, None] + sample_columns(samples, w) * slopes, p.mover_work_px)
            if over is not None:
                off |= held
            slopes, before = column_slopes(samples, measured, off, w), slopes
            if np.abs(slopes - before).max() <= ROLL_SETTLED * np.abs(slopes).max():
                break
        half = p.bands * samples.shape[1] / w / 2  # flow rows from the middle to the top or bottom sampled row
        # a camera known to roll (or zoom) has it taken out whole; another, less a dead zone (CameraAnalyzer.rolling)
        spin = slopes if self.rolls else dead_zone(slopes, p.roll_dead_work_px / half)
        column = np.arange(w) - (w - 1) / 2
        background = bands[band_of_row][:, None] + column[None, :, None] * spin  # (h, w, 2): roll and zoom too
        moving = off_background(flow, background, p.mover_work_px)
        if over is not None:
            moving &= ~over
        moving = moving.view(np.uint8)
        regions = self.regions(cv2.morphologyEx(moving, cv2.MORPH_OPEN, OPEN_KERNEL), flow, bands, band_of_row,
                               grid * step, scale)
        # the bands as the camera's translation alone: the row dependence that roll and zoom give every shutter
        # taken out (a roll of w gives dx = -w (y - cy) and dy = w (x - cx); a zoom s, dx = s (x - cx) and
        # dy = s (y - cy)); what is left is the readout's
        rows = band_centres(p.bands) * h - h / 2  # each band's centre row about the middle (rows h: flow px)
        turned = rows[:, None] * np.array([spin[1], -spin[0]])[None, :]
        bands = bands + turned
        camera = float(np.hypot(*median(bands, 0)))
        self.last = (flow, camera)
        s = scale  # working px -> native px
        motion = max([camera] + [r["speed_px"] / s + camera for r in regions]) * s
        # what the dead zone left in: added where the camera turns out to roll (CameraAnalyzer.rolling)
        left = rows[:, None] * np.array([slopes[1], -slopes[0]])[None, :] - turned
        return FrameMotion(self.index, static=False, bands=bands * s, regions=regions, motion_px=motion,
                           camera_moving=camera > p.camera_work_px, roll_work_px=float(np.abs(slopes).max() * half),
                           unturned=None if self.rolls else left * s)

    def regions(self, mask: np.ndarray, flow: np.ndarray, bands: np.ndarray, band_of_row: np.ndarray,
                cell: int, scale: float) -> list[dict]:
        """Connected moving regions of at least min_region_fraction of the frame: box, velocity relative to the
        background, speed; native px (`cell`: work px per mask px, `scale`: native px per work px)."""
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        s = scale * cell  # mask px -> native px
        out = []
        for i in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= self.p.min_region_fraction * mask.size) + 1:
            x, y, w, h, _ = stats[i]
            pixels = labels[y:y + h, x:x + w] == i  # its pixels in the box, at mask resolution
            ys, xs = np.nonzero(pixels)
            rel = flow[y + ys, x + xs] - bands[band_of_row[y + ys]]
            vx, vy = median(rel, 0)
            # speed: a high quantile, not the median: inside a flat-coloured mover the flow is smoothed towards
            # the background (aperture), only its textured edges move at its true speed
            speed = quantile(np.hypot(rel[:, 0], rel[:, 1]), REGION_SPEED_QUANTILE)
            out.append({"x": int(x * s), "y": int(y * s), "w": int(w * s), "h": int(h * s),
                        "vx": float(vx * scale), "vy": float(vy * scale), "speed_px": speed * scale,
                        "mask": pixels})
        return out
