"""A camera's decoded frames with their video evidence: what `scan` and `watch` read (in the camera's decoder process,
rsdetect.serve.decoder) and what the `video` stage measures, so both measure the same path.

Frames go through a CameraAnalyzer in order and come out in order, each with its evidence row, `lag_frames` frames
later (a frame's shear needs the camera's motion around it); the last ones at the end of the source. Frames without
a time stamp (image folders) have no motion to measure: they come out at once, with no evidence, and are scored by
the single-frame model. The frame rate the analyzer needs (the readout is measured in frame periods) is that of the
frames it is given: from the first two time stamps, so `--every N` and `--fps F` sampling are accounted for.
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from rsdetect.config import VideoAnalysisParams
from rsdetect.video.analyze import CameraAnalyzer

Evidence = dict[str, Any]
AnalysedFrame = tuple[int, float | None, np.ndarray, Evidence | None]  # a FrameItem and its evidence row


def analysed_frames(frames: Iterable[tuple[int, float | None, np.ndarray]], p: VideoAnalysisParams,
                    readout_ms: float | None, shutter: str | None,
                    on_readout: Callable[[dict[str, Any]], None], previews: int = 0) -> Iterator[AnalysedFrame]:
    """`frames` with their evidence (see the module docstring); `on_readout` hears the camera's readout
    ({ms, ci_ms, source, evidence_frames}) whenever it changes, and once at the end.

    `previews`: the camera's worst frames (highest probability, ties to the earlier frame, as the scorer keeps them)
    that the camera's own motion sheared get `unrolled` in their evidence: the frame with the measured per-row
    motion undone (CameraAnalyzer.unrolled), the de-skewed preview for the correction step. Only here is that
    motion known, so the preview is made here, for the `previews` frames that can still be among the worst."""
    pending: deque[tuple[int, float | None, np.ndarray]] = deque()
    analyzer: CameraAnalyzer | None = None
    said: dict[str, Any] | None = None
    worst: list[tuple[float, int]] = []  # min-heap of (probability, -index): the scorer's worst-frame order

    def preview(index: int, rgb: np.ndarray, row: Evidence) -> Evidence:
        key = (float(row["probability"]), -index)
        if previews <= 0 or (len(worst) >= previews and key <= worst[0]):
            return row
        (heapq.heappush if len(worst) < previews else heapq.heapreplace)(worst, key)
        if row["evidence"] != "camera-shear":
            return row
        assert analyzer is not None
        unrolled = analyzer.unrolled(rgb, row["frame"])
        return row if unrolled is None else {**row, "unrolled": unrolled}

    def release(rows: list[Evidence]) -> Iterator[AnalysedFrame]:
        nonlocal said
        for row in rows:
            index, ts, rgb = pending.popleft()
            yield index, ts, rgb, preview(index, rgb, row)
        assert analyzer is not None
        readout = analyzer.readout().as_dict()
        if readout != said:
            said = readout
            on_readout(readout)

    for index, ts, rgb in frames:
        if ts is None:  # a still: nothing to measure motion against
            yield index, ts, rgb, None
            continue
        if analyzer is None and pending:
            period = ts - pending[0][1]  # type: ignore[operator]
            if not period > 0:  # a stream whose clock does not advance: no frame rate, no readout in frames
                yield (*pending.popleft(), None)
                pending.append((index, ts, rgb))
                continue
            analyzer = CameraAnalyzer(p, 1.0 / period, readout_ms, shutter, lag=p.lag_frames)
            rows = analyzer.push(pending[0][2])
            yield from release(rows)
        pending.append((index, ts, rgb))
        if analyzer is not None:
            yield from release(analyzer.push(rgb))
    if analyzer is not None:
        yield from release(analyzer.flush())
    while pending:  # a single timed frame: no second one to measure against
        yield (*pending.popleft(), None)
