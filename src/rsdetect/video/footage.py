"""Real footage through the video path: flag rates, the readout, frames/s (the core of `rsdetect check-footage`).

Each video is decoded with OpenCV and streamed through a CameraAnalyzer (bounded memory, lag_frames of waiting),
so a long recording costs no more memory than a short one. A file that cannot be opened or decoded, or that says
it has no frame rate, is a one-line RsdetectError naming it.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import VideoAnalysisParams
from rsdetect.errors import RsdetectError
from rsdetect.video.analyze import CameraAnalyzer


def open_video(path: str | Path) -> tuple[cv2.VideoCapture, float]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise RsdetectError(f"{path}: cannot be opened as a video")
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not (fps > 0 and np.isfinite(fps)):
        cap.release()
        raise RsdetectError(f"{path}: the video gives no frame rate (the readout is measured in frame periods)")
    return cap, float(fps)


def read_frames(cap: cv2.VideoCapture, max_frames: int | None) -> Iterator[np.ndarray]:
    count = 0
    while max_frames is None or count < max_frames:
        ok, frame = cap.read()
        if not ok:
            return
        count += 1
        yield frame


def check_video(path: str | Path, p: VideoAnalysisParams, readout_ms: float | None = None,
                shutter: str | None = None, max_frames: int | None = None) -> tuple[dict, list[dict]]:
    """One video's summary (frames, flag rate, static share, flagged frames without motion, readout, frames/s of
    decoding plus analysis) and its per-frame rows."""
    cap, fps = open_video(path)
    analyzer = CameraAnalyzer(p, fps, readout_ms, shutter, lag=p.lag_frames)
    rows: list[dict] = []
    start = time.perf_counter()
    try:
        for frame in read_frames(cap, max_frames):
            rows += analyzer.push(frame)
        rows += analyzer.flush()
    finally:
        cap.release()
    elapsed = time.perf_counter() - start
    if not rows:
        raise RsdetectError(f"{path}: no frame could be decoded")
    shears = [r["rs_shear_px"] for r in rows if r["rs_shear_px"] is not None and not r["static"]]
    summary = {
        "video": str(path), "fps": round(fps, 3), "frames": len(rows),
        "flag_rate": round(float(np.mean([r["flag"] for r in rows])), 4),
        "static_rate": round(float(np.mean([r["static"] for r in rows])), 4),
        "flagged_without_motion": sum(r["flag"] and r["motion_px"] == 0 for r in rows),
        "rs_shear_px_p95": round(float(np.percentile(shears, 95)), 3) if shears else None,
        "readout": analyzer.readout().as_dict(),
        "frames_per_s": round(len(rows) / elapsed, 1),
    }
    return summary, rows
