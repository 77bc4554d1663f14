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

import base64

import cv2
import numpy as np
from scipy.special import ndtr

from rsdetect.config import VideoAnalysisParams
from rsdetect.errors import RsdetectError
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


UNROLL_ROWS = 17  # rows of a frame at which `unroll` gives the camera's displacement (linear between: a shake's
# curve over one readout bends by well under 1% of its size between samples 1/16 of the frame apart)


def unroll_model(fm: FrameMotion, trajectory: Trajectory | None, r: float, height: int) -> dict:
    """How to undo frame fm's measured rolling-shutter displacement, every row as if read at mid-frame: the
    hand-off to a correction step (`unroll` applies it; the de-skew preview of the worst frames is it applied).

    - `rows`: UNROLL_ROWS rows of the frame (native, 0 to H - 1); `camera`: the camera's displacement (dx, dy) of
      each, native px, relative to the mid-frame row's, from its fitted trajectory (null where it did not move);
    - `movers`: each moving region's `box` (x, y, w, h, native px), `shear` (sx, sy): its velocity against the
      background x the readout, so that its row y sits shear x (y / (H - 1) - 1/2) from where it was at mid-frame
      (the direction is the region's median flow, the size its speed_px: the median under-reads a flat-coloured
      mover), and `mask`, its pixels in the box at the flow's resolution (rows, cols, bits: np.packbits of the
      row-major mask, base64), which `unroll` stretches over the box."""
    rows = np.linspace(0.0, height - 1, UNROLL_ROWS)
    camera = None
    if fm.camera_moving and trajectory is not None:
        pos = trajectory.at(fm.index + r * rows / max(height - 1, 1))
        camera = np.round(pos - trajectory.at(np.array([fm.index + r / 2])), 3).tolist()
    movers = []
    for reg in fm.regions:
        norm = float(np.hypot(reg["vx"], reg["vy"]))
        if norm <= 0:
            continue
        shear = (reg["vx"] / norm * reg["speed_px"] * r, reg["vy"] / norm * reg["speed_px"] * r)
        mask = np.asarray(reg["mask"], bool)
        movers.append({"box": [reg["x"], reg["y"], reg["w"], reg["h"]], "shear": [round(v, 3) for v in shear],
                       "mask": {"rows": mask.shape[0], "cols": mask.shape[1],
                                "bits": base64.b64encode(np.packbits(mask).tobytes()).decode("ascii")}})
    return {"rows": np.round(rows, 2).tolist(), "camera": camera, "movers": movers}


def unroll(frame: np.ndarray, model: dict) -> np.ndarray:
    """`frame` with the displacement `model` (unroll_model, a frames.jsonl row's `unroll`) undone: each row moved
    back by the camera's displacement (interpolated between the model's rows), then each mover's pixels by its own
    shear (its mask, grown by that displacement; the background around it stays). RsdetectError for a frame of
    another height than the model's."""
    h = frame.shape[0]
    rows = np.asarray(model["rows"], float)
    if abs(rows[-1] - (h - 1)) > 0.01:
        raise RsdetectError(f"unroll: the model is for a frame {rows[-1] + 1:g} rows tall, this one has {h}")
    out = frame
    if model["camera"] is not None:
        camera = np.asarray(model["camera"], float)
        at = np.arange(h)
        out = warp_rows(out, -np.interp(at, rows, camera[:, 0]), -np.interp(at, rows, camera[:, 1]),
                        border=cv2.BORDER_REPLICATE)
    return unroll_movers(out, model["movers"])


def unroll_movers(frame: np.ndarray, movers: list[dict]) -> np.ndarray:
    """The frame with each mover's own rolling-shutter shear undone (unroll_model's `movers`): a region moving at v
    px/frame against the background has its row y displaced by v x r x (y / (H - 1) - 1/2) from where it was at
    mid-frame, so its pixels (its mask, grown by that displacement) are moved back by it; the background around
    it stays."""
    if not movers:
        return frame
    h = frame.shape[0]
    out = frame.copy()
    frac = np.arange(h) / max(h - 1, 1) - 0.5
    for mover in movers:
        (x, y, w, bh), (sx, sy) = mover["box"], mover["shear"]
        pad = int(np.ceil(max(abs(sx), abs(sy)) / 2)) + 1
        x0, y0 = max(x - pad, 0), max(y - pad, 0)
        x1, y1 = min(x + w + pad, frame.shape[1]), min(y + bh + pad, h)
        warped = warp_rows(frame, -sx * frac, -sy * frac, border=cv2.BORDER_REPLICATE, box=(x0, y0, x1 - x0, y1 - y0))
        cells = mover["mask"]
        bits = np.unpackbits(np.frombuffer(base64.b64decode(cells["bits"]), np.uint8),
                             count=cells["rows"] * cells["cols"]).reshape(cells["rows"], cells["cols"])
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        mask[y - y0:y - y0 + bh, x - x0:x - x0 + w] = cv2.resize(bits, (w, bh), interpolation=cv2.INTER_NEAREST)[
            :y1 - y, :x1 - x]
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
    row = {**base, "rs_shear_px": round(shear, 3), "probability": round(prob, 4), "flag": prob >= 0.5,
           "evidence": "camera-shear" if cam > mov else "mover-shear" if mov > 0 else "no-shear"}
    # how to undo what was measured, where something was (`unroll`: the hand-off to a correction step)
    return {**row, "unroll": unroll_model(fm, trajectory, r, height)} if shear > 0 else row
