"""The scoring core `scan` and `watch` share: a scored frame becomes a row (probability, smoothing over the camera's
last K frames, the flag at the threshold, shear columns) in its camera's running state (flag counts, worst frames,
failures), whichever command, process or Dask worker scores it."""
from __future__ import annotations

import heapq
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from rsdetect.errors import RsdetectError
from rsdetect.preprocess import Box, box_text, score_tiled, to_tiles
from rsdetect.serve.explain import Explainer
from rsdetect.serve.loaders import LoadedModel
from rsdetect.serve.reports import Score, shear_columns
from rsdetect.serve.sources import FrameItem, Source

WORST_PER_CAMERA = 5  # worst frames kept per camera (with heatmaps and de-skewed previews in the reports)

Row = dict[str, Any]


def report_failure(camera: str, message: str) -> None:
    """A camera's failure as one line on stderr (above any progress bar)."""
    tqdm.write(f"scan: {camera}: {message}", file=sys.stderr)


# ---------------------------------------------------------------- scores

class RollingMean:
    """The mean of the last k values pushed (of all of them while fewer than k): the per-camera smoothing."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise RsdetectError(f"--smooth must be >= 1, got {k}")
        self._window: deque[float] = deque(maxlen=k)

    def push(self, value: float) -> float:
        """Add a value; the mean of the window now."""
        self._window.append(value)
        return float(np.mean(self._window))


def smooth(probs: np.ndarray | list[float], k: int) -> np.ndarray:
    """A whole series smoothed as a scan smooths it frame by frame: smoothed[i] = mean(probs[max(0, i-k+1): i+1])."""
    window = RollingMean(k)
    return np.array([window.push(float(p)) for p in probs], np.float64)


def longest_run(flags: list[bool] | np.ndarray) -> int:
    """Length of the longest run of consecutive True values."""
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


class FlagStats:
    """A camera's running flag counts, in constant memory (a camera at 5 frames/s scores 432,000 frames a day):
    frames scored, flagged, the longest run of flagged frames and when it was last flagged."""

    def __init__(self) -> None:
        self.scored = self.flagged = self.run = self.longest = 0
        self.last_flagged_time: float | None = None

    def add(self, flag: bool, now: float) -> None:
        self.scored += 1
        self.flagged += flag
        self.run = self.run + 1 if flag else 0
        self.longest = max(self.longest, self.run)
        if flag:
            self.last_flagged_time = now

    def summary(self) -> dict[str, Any]:
        """The counts (no clock: a scan's reports are the same on every run; watch adds last_flagged_time)."""
        return {"frames_scored": self.scored, "flagged": self.flagged,
                "flagged_rate": self.flagged / self.scored if self.scored else None,
                "longest_flagged_run": self.longest}


@dataclass
class CameraState:
    """Running per-camera state: smoothing window, flag counts, worst frames and failures; the one place a scored
    frame becomes a row, for scan and watch alike."""

    source: Source
    k: int
    threshold: float
    keep_scores: bool = False
    explain: Explainer | None = None  # shear columns of flagged frames
    echo: bool = True  # print failures as they happen; a Dask worker leaves that to the main process (shard.py)
    stats: FlagStats = field(default_factory=FlagStats)
    errors: list[str] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)  # for annotation only
    _window: RollingMean = field(init=False)
    _worst: list = field(default_factory=list)  # min-heap of (probability, -frame_index, frame_index, rgb)

    def __post_init__(self) -> None:
        self._window = RollingMean(self.k)

    def fail(self, message: str) -> None:
        """Count a failure and report it as one line on stderr (unless echo is off)."""
        self.errors.append(message)
        if self.echo:
            report_failure(self.source.camera, message)

    def add(self, frame_index: int, timestamp: float | None, prob: float, rgb: np.ndarray, tile: Box) -> Row:
        """Score one frame (its probability, from the tile `tile`) into the running state; returns its output row."""
        smoothed = self._window.push(prob)
        flag = smoothed >= self.threshold
        # Measured before the frame is counted: a Ctrl-C during the estimate must not count a frame without a row.
        shear = shear_columns(self.explain, rgb, flag)
        self.stats.add(flag, time.time())
        if self.keep_scores:
            self.scores.append((frame_index, prob, smoothed, flag))
        item = (prob, -frame_index, frame_index, rgb)  # ties: the earlier frame ranks worse
        if len(self._worst) < WORST_PER_CAMERA:
            heapq.heappush(self._worst, item)
        elif item[:2] > self._worst[0][:2]:
            heapq.heapreplace(self._worst, item)
        return {"camera": self.source.camera, "frame_index": frame_index,
                "timestamp_s": None if timestamp is None else round(float(timestamp), 6),
                "probability": round(prob, 6), "smoothed": round(smoothed, 6), "flag": bool(flag),
                "tile": box_text(tile), "source": self.source.frame_source(frame_index), **shear}

    def summary(self) -> dict[str, Any]:
        """The camera's counts and failures, as summary.json gives them."""
        return {**self.stats.summary(), "failures": len(self.errors), "errors": list(self.errors)}

    def worst(self) -> list[tuple[float, int, np.ndarray]]:
        """The highest-probability frames, worst first: (probability, frame_index, rgb)."""
        return [(p, i, rgb) for p, _, i, rgb in sorted(self._worst, key=lambda t: t[:2], reverse=True)]



def score_items(items: list[tuple[CameraState, FrameItem]], model: LoadedModel, tiles_per_call: int,
                tiled: list[tuple[np.ndarray, list[Box]]] | None = None) -> list[Row]:
    """Score frames, of one camera or several, together: each frame whole (S x S tiles at the training scale, the
    max over them; preprocess.score_tiled), added to its camera's state; one row per frame, in order.
    `tiled`: the frames' to_tiles where already cut (scan cuts them in its reader thread); else cut here.
    (`watch` batches across cameras through this, so both commands score and record frames the same way.)"""
    if tiled is None:
        tiled = [to_tiles(rgb, model.image_size) for _, (_, _, rgb) in items]
    probs, boxes = score_tiled(model.scorer, tiled, tiles_per_call)
    if not np.all(np.isfinite(probs)):  # a broken export must not pass as "nothing flagged"
        state, (index, _, _) = items[0]
        raise RsdetectError(f"model returned non-finite probabilities for {state.source.camera} frame {index}+")
    return [state.add(index, ts, float(p), rgb, box)
            for (state, (index, ts, rgb)), p, box in zip(items, probs, boxes, strict=True)]


