"""One camera's footage, frame by frame: motion, readout, per-frame evidence. The entry point of the video path.

`CameraAnalyzer` takes frames one at a time (`push`) and hands back finished frame rows; memory is bounded by
video.analysis.window_frames (band displacements of recent frames, a few numbers each) and 2 x lag_frames
(frames waiting for later evidence). A frame's shear needs the camera's trajectory around it, so its row comes
once lag_frames more frames have been measured, in batches of lag_frames (or at `flush`); the readout is
re-estimated on the window after every refit_frames frames of camera motion. `analyze` runs a whole clip: every
frame waits for the end, so every row uses the readout estimated from the whole clip.

A readout is configured (readout_ms, or shutter global = 0 ms), else estimated from the camera's own motion
(rsdetect.video.readout) or from the lights' flicker read row by row (rsdetect.video.flicker; the narrower interval
where both tell it), else unknown; it is never invented.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

from rsdetect.config import VideoAnalysisParams
from rsdetect.errors import RsdetectError
from rsdetect.video.evidence import frame_result, row_fit
from rsdetect.video.flicker import flicker_readout
from rsdetect.video.motion import FrameMotion, MotionMeter, median
from rsdetect.video.readout import (
    Readout,
    Trajectory,
    band_weights,
    estimate_readout,
    fit_trajectory,
    shear_smoothness,
)
from rsdetect.video.sensor import check_sensor


def configured_readout(readout_ms: float | None, shutter: str | None) -> Readout | None:
    """The readout a camera's configuration gives, or None (to be estimated). RsdetectError for a bad value (the
    one check of a sensor: rsdetect.video.sensor)."""
    sensor = check_sensor(readout_ms, shutter, "camera")
    if sensor.readout_ms is not None:
        return Readout(sensor.readout_ms, (sensor.readout_ms, sensor.readout_ms), "configured", 0)
    if sensor.shutter == "global":
        return Readout(0.0, (0.0, 0.0), "configured", 0)
    return None


class CameraAnalyzer:
    """Per-camera state: push frames, get finished rows; readout() says what the readout is and why."""

    def __init__(self, p: VideoAnalysisParams, fps: float, readout_ms: float | None = None,
                 shutter: str | None = None, lag: int | None = None):
        if not (fps > 0 and np.isfinite(fps)):
            raise RsdetectError(f"fps: {fps!r} must be > 0 (the readout is measured in frame periods)")
        self.p, self.fps, self.lag = p, float(fps), lag
        self.meter = MotionMeter(p)
        self.configured = configured_readout(readout_ms, shutter)
        self._readout = self.configured or Readout(None, None, "unknown", 0)
        self.pending: deque[FrameMotion] = deque()
        self.window: deque[FrameMotion] = deque(maxlen=p.window_frames)  # evidence: band displacements
        self.evidence_since_estimate = 0  # frames of camera motion or of flicker since the last estimate
        self.estimates = 0
        self.residuals: deque[float] = deque(maxlen=p.window_frames)  # row-fit residuals of camera-motion frames
        self.height = 0
        self.turns: deque[float] = deque(maxlen=p.window_frames)  # roll_work_px of the window's camera-motion frames

    def readout(self) -> Readout:
        return self._readout

    def push(self, frame: np.ndarray) -> list[dict]:
        self.height = frame.shape[0]
        self.meter.flicker_wanted = self._readout.source == "unknown"  # faint flicker is sampled only then
        fm = self.meter.push(frame)
        self.pending.append(fm)
        if fm.index > 0:
            self.window.append(fm)
            self.evidence_since_estimate += fm.camera_moving or fm.flicker is not None
        if fm.camera_moving:
            self.turns.append(fm.roll_work_px)
            self.rolling()
            self.residuals.append(row_fit(fm)[1])
        if self.lag is None or len(self.pending) < 2 * self.lag:
            return []  # rows leave in batches of lag frames: one trajectory fit per batch
        if self.evidence_since_estimate >= self.next_estimate_after():
            self.estimate()
        return self.finish(len(self.pending) - self.lag)

    def rolling(self) -> None:
        """Whether the camera rolls (or zooms) as it moves: the median roll of its camera-motion frames at the top and
        bottom rows over roll_camera_work_px, once min_evidence_frames are measured. From then on its frames' roll is
        taken out whole (MotionMeter.rolls), and so is the rest of it in the frames still held.

        The dead zone (roll_dead_work_px) keeps a frame's readout shear from being taken for flow's own column
        structure, but leaves up to its size of a real roll's row dependence in every frame, which the readout fit
        reads as a readout: a global-shutter mount shaking with up to 3 px of roll at the side edges of real footage
        got 8.5-16.7 ms. Per camera, the two are far apart (experiments/real_shake.py, seed 0: medians of 0.25-0.48
        work px with that roll, 0.04-0.10 without): a mount rolls or it does not."""
        rolls = (len(self.turns) >= self.p.min_evidence_frames
                 and float(median(np.array(self.turns), 0)) > self.p.roll_camera_work_px)
        if rolls and not self.meter.rolls:
            held = {id(fm): fm for fm in (*self.window, *self.pending)}.values()
            for fm in held:
                if fm.bands is not None and fm.unturned is not None:
                    fm.bands, fm.unturned = fm.bands + fm.unturned, None
            self.residuals = deque((row_fit(fm)[1] for fm in self.window if fm.camera_moving),
                                   maxlen=self.p.window_frames)
        self.meter.rolls = rolls

    def next_estimate_after(self) -> int:
        """Frames of evidence (camera motion, flicker) to gather before the next estimate: while the readout is not
        yet known, after min_evidence_frames, then twice as many each time (a stream's first flags need not wait
        refit_frames of evidence, and a camera that never gives enough costs a handful of fits); once known,
        refit_frames."""
        if self._readout.source == "estimated":
            return self.p.refit_frames
        return min(self.p.refit_frames, self.p.min_evidence_frames * 2 ** self.estimates)

    def flush(self) -> list[dict]:
        """Rows of every frame still waiting, with the readout from all the evidence there is."""
        self.estimate()
        return self.finish(len(self.pending))

    def estimate(self) -> None:
        if self.configured is not None or not self.window:
            return
        frames, disp, moving, weights = self.evidence()
        motion = estimate_readout(frames, disp, moving, self.fps, self.p, weights)
        flicker = self.flicker_readout()
        # the narrower interval where both tell it (the flicker's is the tighter where lights flicker: its rows are
        # read straight off the sensor's timing, a shake's through a fitted trajectory)
        # (unknown: the camera-motion frames it had, as before; a still camera's sampled row gains are no evidence
        # of a readout until they tell one)
        known = [r for r in (motion, flicker) if r.ms is not None]
        self._readout = min(known, key=lambda r: r.ci_ms[1] - r.ci_ms[0] if r.ci_ms else np.inf) if known else motion
        self.evidence_since_estimate = 0
        self.estimates += 1

    def evidence(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The window's frames, band displacements (a static frame: zero, it was measured still), camera motion and
        band weights (by texture where the camera moved, else 1: readout.band_weights)."""
        frames = np.array([fm.index for fm in self.window], float)
        zero = np.zeros((self.p.bands, 2))
        disp = np.array([zero if fm.bands is None else fm.bands for fm in self.window])
        moving = np.array([fm.camera_moving for fm in self.window])
        unknown = np.full(self.p.bands, np.nan)
        weights = band_weights(np.array([unknown if fm.texture is None else fm.texture for fm in self.window]))
        return frames, disp, moving, weights

    def flicker_readout(self) -> Readout:
        """The readout from the window's flicker profiles (rsdetect.video.flicker), those of the frame size last
        seen (a stream that reconnects at another resolution measures its rows anew)."""
        lit = [(fm.index, fm.flicker) for fm in self.window if fm.flicker is not None]
        if not lit:
            return Readout(None, None, "unknown", 0)
        lit = [(index, gains) for index, gains in lit if len(gains) == len(lit[-1][1])]
        return flicker_readout(np.array([index for index, _ in lit], float), np.array([gains for _, gains in lit]),
                               self.height, self.fps, self.p)

    def finish(self, count: int) -> list[dict]:
        """Rows of the `count` oldest waiting frames."""
        batch = [self.pending.popleft() for _ in range(count)]
        r = None if self._readout.ms is None else self._readout.ms * self.fps / 1000.0
        around = (batch[0].index - self.p.lag_frames, batch[-1].index + self.p.lag_frames)
        trajectory = self.trajectory(r, around) if any(fm.camera_moving for fm in batch) else None
        noise = float(np.median(self.residuals)) if self.residuals else 0.0
        return [frame_result(fm, trajectory, r, noise, self.height, self.p, 1000.0 / self.fps) for fm in batch]

    def trajectory(self, r: float | None, around: tuple[int, int] | None = None) -> Trajectory | None:
        """The camera's trajectory fitted with readout r on the window's evidence, or on its frames within
        `around` (first, last index): a frame's shear depends on the motion near it, and a local fit keeps a
        stream's per-frame cost independent of window_frames."""
        if r is None or not self.window:
            return None
        frames, disp, _, weights = self.evidence()
        if around is not None:
            near = (frames >= around[0]) & (frames <= around[1])
            if not near.any():
                return None
            frames, disp, weights = frames[near], disp[near], weights[near]
        return fit_trajectory(frames, disp, r, self.p, weights, shear_smoothness(self.p, self.fps))


def analyze(frames: Iterable[np.ndarray], fps: float, p: VideoAnalysisParams, readout_ms: float | None = None,
            shutter: str | None = None) -> tuple[list[dict], dict]:
    """Per-frame rows of a whole clip and the camera's readout ({ms, ci_ms, source, evidence_frames})."""
    analyzer = CameraAnalyzer(p, fps, readout_ms, shutter, lag=None)
    for frame in frames:
        analyzer.push(frame)
    rows = analyzer.flush()
    return rows, analyzer.readout().as_dict()
