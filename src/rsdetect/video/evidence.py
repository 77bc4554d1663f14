"""Per-frame rolling-shutter evidence: the shear in native px, the motion, the row dependence, one probability.

- `rs_shear_px`: with a readout (configured or estimated), the sideways displacement between the frame's rows: the
  camera's fitted trajectory X at the rows' read times (rsdetect.video.readout), and for each moving region its
  velocity relative to the background x readout x its height / (H - 1); the largest. 0 for a static frame (nothing
  moves), null where the readout is unknown.
- `row_dependence`: the frame-to-frame displacement's slope over the normalised row (both axes), over its standard
  error from the camera's own band noise (median RMS residual about the per-frame line over its moving frames): a
  z statistic normalised per camera. A rolling shutter under changing motion leaves one; a global shutter does not.
- `probability`: a logistic of rs_shear_px around flag_shear_px where a readout exists (evidence "camera-shear" or
  "mover-shear", whichever is larger; "no-shear" where something moves but neither shears), else, for frames where
  the camera moves, 0.49 x a logistic of row_dependence around row_z_flag ("row-dependence": it ranks frames, never
  flags one); for movers alone, whose shear cannot be told without a readout ("no-readout"), 0.49 x the probability
  that a typical readout shears them by flag_shear_px or more (`typical_shear`: it ranks, never flags); a frame
  where nothing moves is 0 ("static"). `flag` = probability >= 0.5.
- `shear_px_per_ms`: the shear each ms of readout gives the frame at constant velocity (native px per ms): the
  largest of the camera's speed and each moving region's speed x its height's share of the rows, over the frame
  period. It needs no readout, so fixed cameras whose readout is unknown (most) can still be compared; times a
  sensor's readout it is rs_shear_px to first order (a shake's shear follows its fitted trajectory instead).
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.special import ndtr

from rsdetect.config import VideoAnalysisParams
from rsdetect.shutter import shear_extent, warp_rows
from rsdetect.video.motion import FrameMotion
from rsdetect.video.readout import Trajectory, band_centres

ROWS_SAMPLED = 33  # rows at which the trajectory is read for a frame's shear (its curve, not only the ends)


def camera_shear(trajectory: Trajectory | None, index: int, r: float) -> float:
    """Largest distance between the camera displacements of two rows of frame `index` (native px)."""
    if trajectory is None or r <= 0:
        return 0.0
    pos = trajectory.at(index + r * np.linspace(0.0, 1.0, ROWS_SAMPLED))
    return shear_extent(pos[:, 0], pos[:, 1])


def row_displacement(trajectory: Trajectory, index: int, r: float, height: int) -> np.ndarray:
    """(height, 2): the camera's displacement of each row of frame `index` relative to its middle row, native px."""
    pos = trajectory.at(index + r * np.arange(height) / max(height - 1, 1))
    return pos - trajectory.at(np.array([index + r / 2]))


def unroll(frame: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The frame with each row moved back by its measured displacement (`row_displacement`): the camera's
    rolling-shutter shear undone, every row as if read at mid-frame (the de-skew preview of a flagged frame)."""
    return warp_rows(frame, -rows[:, 0], -rows[:, 1], border=cv2.BORDER_REPLICATE)


def unroll_movers(frame: np.ndarray, regions: list[dict], r: float) -> np.ndarray:
    """The frame with each moving region's own rolling-shutter shear undone: a region moving at v px/frame against
    the background has its row y displaced by v x r x (y / (H - 1) - 1/2) from where it was at mid-frame, so its
    pixels (its mask, grown by that displacement) are moved back by it, as `unroll` does for the camera; the
    background around it stays. v: the region's median direction at its measured speed (speed_px: the median
    under-reads a flat-coloured mover)."""
    h = frame.shape[0]
    out = frame.copy()
    frac = np.arange(h) / max(h - 1, 1) - 0.5
    for reg in regions:
        norm = float(np.hypot(reg["vx"], reg["vy"]))
        if norm <= 0:
            continue
        vx, vy = (reg["vx"] / norm * reg["speed_px"] * r, reg["vy"] / norm * reg["speed_px"] * r)
        pad = int(np.ceil(max(abs(vx), abs(vy)) / 2)) + 1
        x0, y0 = max(reg["x"] - pad, 0), max(reg["y"] - pad, 0)
        x1, y1 = min(reg["x"] + reg["w"] + pad, frame.shape[1]), min(reg["y"] + reg["h"] + pad, h)
        warped = warp_rows(frame, -vx * frac, -vy * frac, border=cv2.BORDER_REPLICATE, box=(x0, y0, x1 - x0, y1 - y0))
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        mask[reg["y"] - y0:reg["y"] - y0 + reg["h"], reg["x"] - x0:reg["x"] - x0 + reg["w"]] = cv2.resize(
            reg["mask"].astype(np.uint8), (reg["w"], reg["h"]), interpolation=cv2.INTER_NEAREST)[
            :y1 - reg["y"], :x1 - reg["x"]]
        mask = cv2.dilate(mask, np.ones((2 * pad + 1, 2 * pad + 1), np.uint8)).astype(bool)
        out[y0:y1, x0:x1][mask] = warped[mask]
    return out


def mover_shear(fm: FrameMotion, r: float, height: int) -> float:
    """The largest moving region's shear against the background: speed x readout x its height's share of the rows."""
    return max((reg["speed_px"] * r * reg["h"] / max(height - 1, 1) for reg in fm.regions), default=0.0)


def row_fit(fm: FrameMotion) -> tuple[float, float]:
    """(slope over the normalised row, RMS residual) of the band displacement, both axes (hypot, pooled)."""
    if fm.bands is None:
        return 0.0, 0.0
    seen = ~np.isnan(fm.bands).any(axis=1)
    if seen.sum() < 2:
        return 0.0, 0.0
    s = band_centres(len(fm.bands))[seen]
    s = s - s.mean()
    centred = fm.bands[seen] - fm.bands[seen].mean(axis=0)
    slope = (s[:, None] * centred).sum(axis=0) / (s * s).sum()
    residual = centred - s[:, None] * slope[None, :]
    return float(np.hypot(*slope)), float(np.sqrt((residual ** 2).mean()))


def row_dependence(fm: FrameMotion, noise: float) -> float:
    """The frame's row slope over its standard error, the camera's band noise (median RMS residual of its moving
    frames) / sqrt(sum s^2): a z statistic normalised per camera."""
    slope, _ = row_fit(fm)
    if fm.bands is None:
        return 0.0
    s = band_centres(len(fm.bands))[~np.isnan(fm.bands).any(axis=1)]
    if len(s) < 2:  # bands an overlay covers are not measured: too few left to have a slope
        return 0.0
    s = s - s.mean()
    return slope / (max(noise, NOISE_FLOOR_PX) / np.sqrt((s * s).sum()))


# without a readout the probability stays under the flag threshold (0.5), whatever the evidence: at 0.5 x, a row
# dependence of z >= 14 rounded to 0.5 and scan's scorer, which flags at 0.5, flagged the frame its row did not
UNDECIDED = 0.49
NOISE_FLOOR_PX = 0.01  # flow noise never reads below this: a noiseless synthetic band must not divide by ~0


def logistic(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(x, -50, 50))))


def typical_shear(per_period: float, typical: float, p: VideoAnalysisParams) -> float:
    """The probability that the frame's movers, sheared `per_period` px by a readout of one frame period
    (mover_shear), are sheared by flag_shear_px or more under a readout drawn from the cameras' typical ones:
    log-normal, median `typical` (frame periods: video.analysis.typical_readout_ms), log-sd typical_readout_sigma.

    Without a readout a mover's shear cannot be told: a walker at constant speed is sheared alike in every frame,
    and its shape is unknown, so a rolling shutter's walker and its global-shutter twin look the same (measured on
    the issue's recheck, experiments/unseen_recheck.py: every such frame scored 0, walker frame ROC AUC 0.50).
    What can be told is how much a rolling shutter would shear it: speed x readout x height. Ranked by that, the
    frames a correction step should look at first (large, fast movers) come first; it tells no shutter from
    another, so it stays under the flag (x UNDECIDED) and rs_shear_px stays null."""
    shear = per_period * typical
    if shear <= 0:
        return 0.0
    return float(ndtr(np.log(shear / p.flag_shear_px) / p.typical_readout_sigma))


def frame_result(fm: FrameMotion, trajectory: Trajectory | None, r: float | None, noise: float, height: int,
                 p: VideoAnalysisParams, frame_ms: float) -> dict:
    """One frame's row: motion, shear (None where the readout is unknown), shear per ms of readout, row dependence,
    probability, evidence. `frame_ms`: the frame period (the cameras' typical readout in frame periods, for
    `typical_shear`, is video.analysis.typical_readout_ms over it)."""
    z = row_dependence(fm, noise)
    camera = fm.camera_px
    per_period = mover_shear(fm, 1.0, height)  # the movers' shear under a readout of one frame period
    # shear_px_per_ms (module docstring): the camera's speed or the movers' shear, per ms of readout
    per_ms = max(camera if fm.camera_moving else 0.0, per_period) / frame_ms
    base = {"frame": fm.index, "static": fm.static, "motion_px": round(fm.motion_px, 3),
            "camera_px": round(camera, 3), "movers": len(fm.regions), "row_dependence": round(z, 3),
            "shear_px_per_ms": round(per_ms, 4)}
    if fm.static:
        return {**base, "rs_shear_px": 0.0, "probability": 0.0, "flag": False, "evidence": "static"}
    if r is None:
        # no readout: only the camera's own motion can show a row dependence (a mover's shear needs the readout),
        # and it ranks frames but never flags one: measured on 32 clips, a flag from it alone put 15% of the
        # global-shutter twins' frames over 0.5 (flow's own row bias on flat drawn scenes reads as a slope); movers
        # alone are ranked by the shear a typical readout gives them, under the flag as well
        prob = UNDECIDED * (logistic(z - p.row_z_flag) if fm.camera_moving
                            else typical_shear(per_period, p.typical_readout_ms / frame_ms, p))
        return {**base, "rs_shear_px": None, "probability": round(prob, 4), "flag": False,
                "evidence": "row-dependence" if fm.camera_moving else "no-readout"}
    cam = camera_shear(trajectory, fm.index, r) if fm.camera_moving else 0.0
    mov = mover_shear(fm, r, height)
    shear = max(cam, mov)
    prob = logistic((shear - p.flag_shear_px) / p.shear_scale_px)
    return {**base, "rs_shear_px": round(shear, 3), "probability": round(prob, 4), "flag": prob >= 0.5,
            "evidence": "camera-shear" if cam > mov else "mover-shear" if mov > 0 else "no-shear"}
