"""The scoring core `scan` and `watch` share: a scored frame becomes a row (probability, smoothing over the camera's
last K frames, the flag at the threshold, shear columns) in its camera's running state (flag counts, worst frames,
failures), whichever command, process or Dask worker scores it."""
from __future__ import annotations

import heapq
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from rsdetect.errors import RsdetectError
from rsdetect.preprocess import Box, box_text, score_tiled, to_tiles
from rsdetect.serve.explain import Explainer
from rsdetect.serve.loaders import LoadedModel
from rsdetect.serve.reports import Score, Worst, shear_columns
from rsdetect.serve.sources import Source
from rsdetect.threshold import EVIDENCE_THRESHOLD, RollingMean
from rsdetect.video.analyze import configured_readout
from rsdetect.video.readout import Readout

WORST_PER_CAMERA = 5  # worst frames kept per camera (with heatmaps and de-skewed previews in the reports)
# a still: the single-frame model decided
# (frame_file: where a watch saved a flagged video frame, set by watch.loop.CameraLoop.save; reports.ROW_FIELDS' order)
NO_EVIDENCE = {"rs_shear_px": None, "shear_px_per_ms": None, "motion_px": None, "evidence": "cnn", "frame_file": None,
               "unroll": None}

Row = dict[str, Any]


def report_failure(camera: str, message: str) -> None:
    """A camera's failure (or note) as one line on stderr (above any progress bar)."""
    tqdm.write(f"scan: {camera}: {message}", file=sys.stderr)


# ---------------------------------------------------------------- scores

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


# A camera's shear per ms of readout, counted in constant memory: geometric bins 5% wide from 1e-4 to 10 px/ms (the
# first holds everything up to 1e-4, the last everything over 10); its 95th percentile is read to the bin
PER_MS_EDGES = np.geomspace(1e-4, 10.0, 237)


class FlagStats:
    """A camera's running flag counts, in constant memory (a camera at 5 frames/s scores 432,000 frames a day):
    frames scored, flagged, the longest run of flagged frames, when it was last flagged, and its video frames' shear
    per ms of readout (rsdetect.video.evidence: measured without a readout) where something moved."""

    def __init__(self) -> None:
        self.scored = self.flagged = self.run = self.longest = self.static = 0
        self.last_flagged_time: float | None = None
        self.per_ms = np.zeros(len(PER_MS_EDGES) + 1, np.int64)

    def add(self, flag: bool, now: float, static: bool = False, per_ms: float | None = None) -> None:
        self.scored += 1
        self.static += static
        self.flagged += flag
        self.run = self.run + 1 if flag else 0
        self.longest = max(self.longest, self.run)
        if flag:
            self.last_flagged_time = now
        if per_ms is not None and not static:
            self.per_ms[np.searchsorted(PER_MS_EDGES, per_ms)] += 1

    def per_ms_p95(self) -> float | None:
        """The 95th percentile of the shear per ms of readout, to the upper edge of its bin (0 in the first:
        nothing that moved sheared); None without a frame where something moved."""
        n = int(self.per_ms.sum())
        if not n:
            return None
        k = int(np.searchsorted(np.cumsum(self.per_ms), 0.95 * n))
        return 0.0 if k == 0 else round(float(PER_MS_EDGES[min(k, len(PER_MS_EDGES) - 1)]), 4)

    def summary(self) -> dict[str, Any]:
        """The counts (no clock: a scan's reports are the same on every run; watch adds last_flagged_time)."""
        return {"frames_scored": self.scored, "flagged": self.flagged,
                "flagged_rate": self.flagged / self.scored if self.scored else None,
                "longest_flagged_run": self.longest, "static_frames": self.static,
                "shear_px_per_ms_p95": self.per_ms_p95()}


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
    notes: list[str] = field(default_factory=list)  # counted but not failures (a video a few frames short)
    scores: list[Score] = field(default_factory=list)  # for annotation only
    readout: dict[str, Any] | None = None  # the camera's readout as its decoder measures it (video sources)
    _window: RollingMean = field(init=False)
    _worst: list = field(default_factory=list)  # min-heap of (probability, -frame_index, frame_index, rgb, measured)

    def __post_init__(self) -> None:
        self._window = RollingMean(self.k)

    def fail(self, message: str) -> None:
        """Count a failure and report it as one line on stderr (unless echo is off)."""
        self.errors.append(message)
        if self.echo:
            report_failure(self.source.camera, message)

    def note(self, message: str) -> None:
        """Count something that is not a failure (the camera stays ok) and say it as one line (unless echo is off)."""
        self.notes.append(message)
        if self.echo:
            report_failure(self.source.camera, f"note: {message}")

    def set_readout(self, readout: dict[str, Any]) -> None:
        self.readout = readout

    def add(self, frame_index: int, timestamp: float | None, prob: float, rgb: np.ndarray | None, tile: Box | None,
            evidence: dict[str, Any] | None = None) -> Row:
        """Score one frame into the running state; returns its output row. `prob` is the model's (from the tile
        `tile`) for a still, the evidence's for a video frame (`evidence`: its row from rsdetect.video; its pixels
        `rgb` come only where it can be among the worst frames, else None)."""
        smoothed = self._window.push(prob)
        flag = smoothed >= (self.threshold if evidence is None else EVIDENCE_THRESHOLD)
        # A still's shear is estimated from its edges (shear_px); a video frame's is measured (rs_shear_px), so the
        # single-frame estimate, blind to movers, is not run on it. Measured before the frame is counted: a
        # Ctrl-C during the estimate must not count a frame without a row.
        shear = shear_columns(self.explain if evidence is None else None, rgb, flag)
        self.stats.add(flag, time.time(), evidence is not None and evidence["evidence"] == "static",
                       None if evidence is None else evidence["shear_px_per_ms"])
        if self.keep_scores:
            self.scores.append((frame_index, prob, smoothed, flag))
        # ties: the earlier frame ranks worse; a video frame's measured shear, evidence and de-skew preview ride
        # along (stream.py). A frame without pixels: its decoder knew it cannot be among the worst (the same order)
        if rgb is not None:
            item = (prob, -frame_index, frame_index, rgb, None if evidence is None else measured_worst(evidence))
            if len(self._worst) < WORST_PER_CAMERA:
                heapq.heappush(self._worst, item)
            elif item[:2] > self._worst[0][:2]:
                heapq.heapreplace(self._worst, item)
        return {"camera": self.source.camera, "frame_index": frame_index,
                "timestamp_s": None if timestamp is None else round(float(timestamp), 6),
                "probability": round(prob, 6), "smoothed": round(smoothed, 6), "flag": bool(flag),
                "tile": None if tile is None else box_text(tile), "source": self.source.frame_source(frame_index),
                **shear, **(NO_EVIDENCE if evidence is None else measured_columns(evidence, flag))}

    def summary(self) -> dict[str, Any]:
        """The camera's counts, readout and failures, as summary.json gives them."""
        return {**self.stats.summary(), "readout": camera_readout(self.source, self.readout),
                "failures": len(self.errors), "errors": list(self.errors), "notes": list(self.notes)}

    def worst(self) -> list[Worst]:
        """The highest-probability frames, worst first: (probability, frame_index, rgb, what the video evidence
        measured of it or None: reports.Worst)."""
        return [(p, i, rgb, measured) for p, _, i, rgb, measured in sorted(self._worst, key=lambda t: t[:2],
                                                                             reverse=True)]


def measured_columns(evidence: dict[str, Any], flag: bool) -> dict[str, Any]:
    """A video frame's evidence columns of its row; `unroll` (how to undo its measured displacement) for a flagged
    frame only, as a still's shear_px: the hand-off to the correction step."""
    return {**{k: evidence.get(k) for k in NO_EVIDENCE}, "frame_file": None,
            "unroll": evidence.get("unroll") if flag else None}


def measured_worst(evidence: dict[str, Any]) -> dict[str, Any]:
    """What a worst video frame's entry carries of its evidence row (reports.Worst): its measured shear, what
    decided, and its de-skew preview (None where no readout undid anything)."""
    return {"rs_shear_px": evidence["rs_shear_px"], "evidence": evidence["evidence"],
            "unrolled": evidence.get("unrolled")}



def camera_readout(source: Source, measured: dict[str, Any] | None) -> dict[str, Any] | None:
    """summary.json's `readout` of a camera: as its decoder measured it (configured, estimated or unknown), else what
    its configuration says; None for a camera of stills (no motion, no readout)."""
    if measured is not None:
        return measured
    if source.kind == "images":
        return None
    configured = configured_readout(source.readout_ms, source.shutter)
    return (configured or Readout(None, None, "unknown", 0, why="no video frames measured yet")).as_dict()


Item = tuple[CameraState, tuple[int, float | None, np.ndarray | None, dict[str, Any] | None]]  # a state and a Decoded


def still_pixels(item: Item) -> np.ndarray:
    """A frame without evidence always comes with its pixels (only a video frame's evidence may travel alone)."""
    rgb = item[1][2]
    assert rgb is not None, "a frame without evidence came without pixels"
    return rgb


def score_items(items: list[Item], model: LoadedModel, tiles_per_call: int,
                tiled: list[tuple[np.ndarray, list[Box]] | None] | None = None) -> list[Row]:
    """Score frames, of one camera or several, together, each added to its camera's state; one row per frame, in
    order. A video frame with evidence is scored by it (rsdetect.video: motion x readout, in native px); a still by
    the model, whole (S x S tiles at the training scale, the max over them; preprocess.score_tiled).
    `tiled`: the stills' to_tiles where already cut (scan cuts them in its reader thread); else cut here.
    (`watch` batches across cameras through this, so both commands score and record frames the same way.)"""
    if tiled is None:
        tiled = [None] * len(items)
    stills = [i for i, (_, (*_, evidence)) in enumerate(items) if evidence is None]
    probs: dict[int, float] = {}
    boxes: dict[int, Box] = {}
    if stills:
        cut = [tiled[i] or to_tiles(still_pixels(items[i]), model.image_size) for i in stills]
        p, b = score_tiled(model.scorer, cut, tiles_per_call)
        if not np.all(np.isfinite(p)):  # a broken export must not pass as "nothing flagged"
            state, (index, *_) = items[stills[0]]
            raise RsdetectError(f"model returned non-finite probabilities for {state.source.camera} frame {index}+")
        probs.update(zip(stills, map(float, p), strict=True))
        boxes.update(zip(stills, b, strict=True))
    return [state.add(index, ts, probs[i] if evidence is None else float(evidence["probability"]), rgb, boxes.get(i),
                      evidence)
            for i, (state, (index, ts, rgb, evidence)) in enumerate(items)]
