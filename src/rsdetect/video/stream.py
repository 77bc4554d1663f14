"""A camera's decoded frames with their video evidence: what `scan` and `watch` read (in the camera's decoder process,
rsdetect.serve.decoder) and what the `video` stage measures, so both measure the same path.

Frames go through a CameraAnalyzer in order and come out in order, each with its evidence row, `lag_frames` frames
later (a frame's shear needs the camera's motion around it); the last ones at the end of the source. Frames without
a time stamp (image folders) have no motion to measure: they come out at once, with no evidence, and are scored by
the single-frame model. The frame rate the analyzer needs (the readout is measured in frame periods) is that of the
frames it is given: from the first two time stamps, so `--every N` and `--fps F` sampling are accounted for.

A video frame's pixels travel on only where the scorer can use them: a frame with evidence is scored by it, so only
the frames that can still be among the camera's `worst` (saved as images in the reports) keep their pixels, and,
where the caller saves flagged frames (`watch --keep-flagged`), the frames the scorer will flag; the others come out
with None in their place (a camera's frames need not cross to the scorer: issue 21's throughput).
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cv2
import numpy as np

from rsdetect.config import VideoAnalysisParams
from rsdetect.threshold import EVIDENCE_THRESHOLD, RollingMean
from rsdetect.video.analyze import CameraAnalyzer
from rsdetect.video.evidence import unroll

Evidence = dict[str, Any]
# a FrameItem and its evidence row; the pixels are None for a frame with evidence that cannot be among the worst
AnalysedFrame = tuple[int, float | None, np.ndarray | None, Evidence | None]


def analysed_frames(frames: Iterable[tuple[int, float | None, np.ndarray]], p: VideoAnalysisParams,
                    readout_ms: float | None, shutter: str | None,
                    on_readout: Callable[[dict[str, Any]], None], worst: int = 0,
                    flag_smooth: int = 0, bgr: bool = False) -> Iterator[AnalysedFrame]:
    """`frames` with their evidence (see the module docstring); `on_readout` hears the camera's readout
    ({ms, ci_ms, source, evidence_frames}) whenever it changes, and once at the end.

    `worst`: how many worst frames the scorer keeps per camera (highest probability, ties to the earlier frame).
    A frame that can still be among them keeps its pixels, and where the camera's motion or a mover sheared it,
    gets `unrolled` in its evidence: the frame with its row's `unroll` applied (evidence.unroll: the measured
    per-row motion undone), the de-skewed preview for the correction step (only here are the pixels at hand).
    `flag_smooth` K > 0: a frame the scorer will flag (its K-frame rolling mean of the evidence's probability at
    EVIDENCE_THRESHOLD: the scorer's rule, rsdetect.threshold) keeps its pixels too, for the caller to save.
    Every other frame with evidence comes out without pixels (None).

    `bgr`: `frames` are BGR as OpenCV decodes them; only the frames whose pixels come out are made RGB (the motion
    is measured on grey, the same from either order: a 1280x720 frame's BGR to RGB cost 0.55 ms, a sixth of
    decoding it, on frames most of which never leave)."""
    to_grey = cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY

    def grey(frame: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(frame, to_grey)

    def rgb_of(frame: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if bgr else frame

    pending: deque[tuple[int, float | None, np.ndarray]] = deque()
    analyzer: CameraAnalyzer | None = None
    said: dict[str, Any] | None = None
    kept: list[tuple[float, int]] = []  # min-heap of (probability, -index): the scorer's worst-frame order
    # The scorer's smoothing of this camera's probabilities, replayed: it sees the same frames in the same order
    # (a watch's reconnect restarts this window but not the scorer's, and a frame a live camera's full queue drops
    # leaves the scorer's: with K > 1 the two can then differ for K - 1 frames; the caller counts a flag without
    # pixels)
    window = RollingMean(flag_smooth) if flag_smooth > 0 else None

    def keep(index: int, rgb: np.ndarray, row: Evidence) -> tuple[np.ndarray | None, Evidence]:
        """The frame's pixels if it can be among the worst (with its preview where the camera or a mover sheared
        it) or, with flag_smooth, if it will be flagged."""
        key = (float(row["probability"]), -index)
        flagged = window is not None and window.push(float(row["probability"])) >= EVIDENCE_THRESHOLD
        if worst <= 0 or (len(kept) >= worst and key <= kept[0]):
            # the scorer's heap would not take it either: same key, same order
            return (rgb_of(rgb) if flagged else None), row
        (heapq.heappush if len(kept) < worst else heapq.heapreplace)(kept, key)
        rgb = rgb_of(rgb)
        if "unroll" not in row:
            return rgb, row
        unrolled = unroll(rgb, row["unroll"])
        return rgb, row if unrolled is rgb else {**row, "unrolled": unrolled}

    def release(rows: list[Evidence]) -> Iterator[AnalysedFrame]:
        nonlocal said
        for row in rows:
            index, ts, rgb = pending.popleft()
            yield index, ts, *keep(index, rgb, row)
        assert analyzer is not None
        readout = analyzer.readout().as_dict()
        if readout != said:
            said = readout
            on_readout(readout)

    for index, ts, frame in frames:
        if ts is None:  # a still: nothing to measure motion against
            yield index, ts, rgb_of(frame), None
            continue
        if analyzer is None and pending:
            period = ts - pending[0][1]  # type: ignore[operator]
            if not period > 0:  # a stream whose clock does not advance: no frame rate, no readout in frames
                first, first_ts, first_frame = pending.popleft()
                yield first, first_ts, rgb_of(first_frame), None
                pending.append((index, ts, frame))
                continue
            analyzer = CameraAnalyzer(p, 1.0 / period, readout_ms, shutter, lag=p.lag_frames)
            rows = analyzer.push(grey(pending[0][2]))
            yield from release(rows)
        pending.append((index, ts, frame))
        if analyzer is not None:
            yield from release(analyzer.push(grey(frame)))
    if analyzer is not None:
        yield from release(analyzer.flush())
    while pending:  # a single timed frame: no second one to measure against
        last, last_ts, last_frame = pending.popleft()
        yield last, last_ts, rgb_of(last_frame), None
