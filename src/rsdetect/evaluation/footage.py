"""How the video path does on real footage nobody rendered: `rsdetect check-footage VIDEO...`.

Each video is read as `scan` reads it (a decoder process of its own, rsdetect.serve.decoder, measuring motion and
rolling-shutter evidence with rsdetect.video), without any model: what is reported is the video evidence alone.
Per video: frames, the frame rate used, the flag rate, the share of static frames, flagged frames in which nothing
moved (must be 0), the 95th percentile of the measured shear (native px) and of the shear per ms of readout over
the frames with motion (px/ms: it needs no readout, so cameras whose readout is unknown can be ranked by what a
rolling shutter would do to them), the readout (configured, estimated from the camera's own motion, or unknown) and
frames/s of decoding plus measuring. A video that cannot be read is one
line in its entry (`error`) and counted; the others go on.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from rsdetect.config import VideoAnalysisParams
from rsdetect.serve.decoder import ReadRequest, decoded_frames
from rsdetect.serve.sources import Sensor, SourceError, parse_sources

NO_SENSOR = Sensor()  # nothing told of the sensor (Sensor is frozen: one shared default is safe)


def check_video(source, analysis: VideoAnalysisParams, max_frames: int | None = None) -> dict[str, Any]:
    """One camera's entry (see the module docstring)."""
    readout: dict[str, Any] = {}
    errors: list[str] = []
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    times: list[float] = []
    start = time.perf_counter()
    entry: dict[str, Any] = {"video": source.spec}
    try:
        for _, ts, _, evidence in decoded_frames(source, errors.append, ReadRequest(max_frames=max_frames,
                                                                                     analysis=analysis),
                                                 on_note=notes.append, on_readout=readout.update):
            if evidence is not None:
                rows.append(evidence)
            if ts is not None:
                times.append(ts)
    except SourceError as exc:
        errors.append(str(exc))
    elapsed = time.perf_counter() - start
    shears = [r["rs_shear_px"] for r in rows if r["rs_shear_px"] is not None and r["evidence"] != "static"]
    per_ms = [r["shear_px_per_ms"] for r in rows if r["evidence"] != "static"]
    entry.update({
        "frames": len(rows),
        "fps": round(1 / float(np.median(np.diff(times))), 3) if len(times) > 1 else None,
        "flag_rate": round(float(np.mean([r["flag"] for r in rows])), 4) if rows else None,
        "static_rate": round(float(np.mean([r["evidence"] == "static" for r in rows])), 4) if rows else None,
        "flagged_without_motion": sum(bool(r["flag"]) and not r["motion_px"] for r in rows),
        "rs_shear_px_p95": round(float(np.percentile(shears, 95)), 3) if shears else None,
        "shear_px_per_ms_p95": round(float(np.percentile(per_ms, 95)), 4) if per_ms else None,
        "readout": readout or None,
        "frames_per_s": round(len(rows) / elapsed, 1) if elapsed > 0 else None,
        "notes": notes, "errors": errors,
    })
    return entry


def check_footage(videos: list[str], analysis: VideoAnalysisParams, sensor: Sensor = NO_SENSOR,
                  max_frames: int | None = None) -> dict[str, Any]:
    """Every video's entry and the totals (videos, failed)."""
    entries = {s.camera: check_video(s, analysis, max_frames) for s in parse_sources(videos, None, sensor)}
    return {"videos": entries, "totals": {"videos": len(entries),
                                          "failed": sum(1 for e in entries.values() if e["errors"])}}
