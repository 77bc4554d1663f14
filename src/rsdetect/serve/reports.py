"""What `scan` writes into its report folder: frames.jsonl and frames.csv (one row per scored frame),
summary.json, the worst frames per camera, a flagged-rate chart and optional annotated videos.

The scan writes them all into a staging folder that replaces the report folder in one rename at the end
(rsdetect.io.staged_dir), so plain writes suffice here: no per-file temp names.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.io import default_file_mode
from rsdetect.serve.explain import NO_SHEAR, Explainer, write_jpeg
from rsdetect.serve.sources import open_capture, video_meta

# frames.csv's columns: a row's fields but `unroll` (nested: frames.jsonl only)
# frame_file: where a watch saved a flagged video frame (--keep-flagged), relative to the report folder; else empty
FIELDS = ("camera", "frame_index", "timestamp_s", "probability", "smoothed", "flag", "tile", "source", "shear_px",
          "shear_direction", "rs_shear_px", "shear_px_per_ms", "motion_px", "evidence", "frame_file")
ROW_FIELDS = (*FIELDS, "unroll")  # frames.jsonl's: `unroll`, how to undo a flagged video frame's measured displacement
REPORT_NAMES = frozenset({"frames.jsonl", "frames.csv", "summary.json", "flagged_rate.png", "worst", "annotated"})
# Temp files earlier versions could leave behind when killed: still part of a report folder, not user data.
_OLD_TEMP = re.compile(r"\.(frames\.jsonl|frames\.csv|summary\.json|flagged_rate\.png)\..+\.tmp")
CHART_LABEL = 24  # characters of a camera name under its bar: a 250-character name squeezed the plot to nothing
ANNOTATE_MAX_WIDTH = 960  # annotated videos are for review; full 4K copies would be huge
Score = tuple[int, float, float, bool]  # (frame_index, probability, smoothed, flag)


def is_report_file(name: str) -> bool:
    """True for the names a report folder holds (so an earlier report folder may be replaced)."""
    return name in REPORT_NAMES or bool(_OLD_TEMP.fullmatch(name))


def safe_name(name: str) -> str:
    """A camera name usable in file names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "camera"


# Longest file-name stem taken from a camera name. File systems cap a name at 255 bytes (NAME_MAX), and a stem
# becomes worst/<stem>_<frame>_deskew.jpg: a 250-character camera name scored every frame, then failed with
# "File name too long" and lost every report. 100 leaves room for the frame number and suffixes.
MAX_STEM = 100
_HASH_CHARS = 8  # of a sha1 hex digest: tells apart stems that are otherwise equal


def _name_hash(camera: str) -> str:
    return hashlib.sha1(camera.encode()).hexdigest()[:_HASH_CHARS]


def file_stems(cameras: Iterable[str]) -> dict[str, str]:
    """A file-name stem per camera, unique and at most MAX_STEM characters: safe_name, plus a short hash of the
    real name where two cameras would otherwise share one ("a b" and "a_b"; "Cam" and "cam" on a case-insensitive
    disk) or where the name had to be cut short."""
    cameras = list(cameras)
    safe = {c: safe_name(c) for c in cameras}
    safe = {c: s if len(s) <= MAX_STEM else f"{s[:MAX_STEM - _HASH_CHARS - 1]}-{_name_hash(c)}"
            for c, s in safe.items()}
    counts: dict[str, int] = {}
    for s in safe.values():
        counts[s.lower()] = counts.get(s.lower(), 0) + 1
    return {c: s if counts[s.lower()] == 1 else f"{s[:MAX_STEM - _HASH_CHARS - 1]}-{_name_hash(c)}"
            for c, s in safe.items()}


class Closing(contextlib.AbstractContextManager):
    """A report writer used as a context manager: close() on the way out, whatever happened."""

    def close(self) -> None:
        raise NotImplementedError

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class FrameLog(Closing):
    """frames.jsonl and frames.csv, one row per scored frame, written as the scan goes."""

    def __init__(self, folder: Path) -> None:
        self._jsonl = open(folder / "frames.jsonl", "w", encoding="utf-8")
        self._csv = open(folder / "frames.csv", "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._csv, fieldnames=FIELDS)
        self._writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        """Append one frame's row (None is an empty CSV cell)."""
        self._jsonl.write(json.dumps(row) + "\n")
        self._writer.writerow(csv_cells(row))

    def close(self) -> None:
        self._jsonl.close()
        self._csv.close()



def csv_cells(row: dict[str, Any]) -> dict[str, Any]:
    """A row's frames.csv cells: FIELDS, None (or missing) as an empty cell."""
    return {k: "" if row.get(k) is None else row[k] for k in FIELDS}


def shear_columns(explain: Explainer | None, rgb: np.ndarray | None, flag: bool) -> dict[str, Any]:
    """The shear_px / shear_direction columns of a frame row (empty without an Explainer or pixels)."""
    return explain.frame_fields(rgb, flag) if explain is not None and rgb is not None else dict(NO_SHEAR)


# A worst frame: (probability, frame_index, RGB frame, measured), measured: for a video frame scored by its evidence,
# {rs_shear_px, evidence, unrolled: its measured de-skew preview or None} (scoring.measured_worst); None for a frame
# the model scored
Worst = tuple[float, int, np.ndarray, dict[str, Any] | None]


def save_worst(folder: Path, stem: str, worst: list[Worst], explain: Explainer | None = None) -> list[dict[str, Any]]:
    """Write a camera's worst frames as worst/<stem>_<frame>.jpg; their summary entries. A video frame scored by its
    evidence says its measured shear and what decided (rs_shear_px, evidence). With an Explainer, each also gets a
    de-skewed preview (_deskew.jpg): the measured one (the per-row motion undone) where the video evidence made one;
    a frame the model scored, its Grad-CAM heatmap (<stem>_<frame>_cam.jpg), shear estimate and the estimate's
    preview."""
    entries = []
    for p, index, rgb, measured in worst:
        rel = f"worst/{stem}_{index}.jpg"
        write_jpeg(folder / rel, rgb)
        entry: dict[str, Any] = {"frame_index": index, "probability": round(p, 6), "path": rel}
        if measured is not None:
            entry.update(rs_shear_px=measured["rs_shear_px"], evidence=measured["evidence"])
        if explain is not None:
            entry.update(explain.worst_extras(folder, f"{stem}_{index}", rgb, measured))
        entries.append(entry)
    return entries


RANKED = 5  # cameras named in each ranking line of `camera_ranking`


def camera_ranking(cameras: dict[str, dict[str, Any]], typical_readout_ms: float | None) -> list[str]:
    """Which cameras distort most, as lines for the end of a scan (summary.json's `cameras`): those flagged, by
    flagged rate, with their readout; and those whose readout is unknown (never flagged: most fixed cameras), by the
    shear each ms of readout gives their frames (shear_px_per_ms_p95; x a typical readout where one is given). Each
    names at most RANKED cameras and says how many more there are; no line where no camera belongs in it."""
    lines = []
    flagged = sorted(((e["flagged_rate"], c) for c, e in cameras.items() if e.get("flagged")), reverse=True)
    if flagged:
        named = [f"{c} {rate:.1%}{readout_text(cameras[c].get('readout'))}" for rate, c in flagged[:RANKED]]
        lines.append(f"most flagged: {', '.join(named)}{more(len(flagged))}")
    exposed = sorted(((e["shear_px_per_ms_p95"], c) for c, e in cameras.items()
                      if e.get("shear_px_per_ms_p95") and (e.get("readout") or {}).get("ms") is None), reverse=True)
    if exposed:
        def at_typical(per_ms: float, first: bool) -> str:
            """In px at a typical readout (what a rolling shutter would make of it), said once which."""
            if typical_readout_ms is None:
                return ""
            which = f" at a typical {typical_readout_ms:g} ms" if first else ""
            return f" ({per_ms * typical_readout_ms:.1f} px{which})"
        named = [f"{c} {per_ms:.3f} px/ms{at_typical(per_ms, i == 0)}"
                 for i, (per_ms, c) in enumerate(exposed[:RANKED])]
        lines.append(f"readout unknown (never flagged), most shear per ms of readout (p95): {', '.join(named)}"
                     f"{more(len(exposed))}; give their readout_ms to flag them")
    return lines


def readout_text(readout: dict[str, Any] | None) -> str:
    return "" if not readout or readout.get("ms") is None else f" (readout {readout['ms']:g} ms, {readout['source']})"


def more(count: int) -> str:
    return f" and {count - RANKED} more" if count > RANKED else ""


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    """summary.json: indented and key-sorted so equal content gives equal bytes."""
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def annotate_video(spec: str, scores: list[Score], threshold: float, out_path: Path, stop_at: int | None,
                   explain: Explainer | None = None) -> None:
    """Re-read a video and write it (MJPG .avi) with each frame's latest score drawn on it, and with an Explainer
    the Grad-CAM heatmap of each flagged scored frame (carried forward with its score).

    Written under a temp name and renamed: an annotation cut short (Ctrl-C) leaves no half video in the reports.
    """
    cap = open_capture(spec)
    native, _ = video_meta(cap)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp.avi")  # the writer picks the container from the suffix
    writer = None
    try:
        pos, current, cam = 0, None, None
        index = -1
        while stop_at is None or index < stop_at:
            ok, bgr = cap.read()
            if not ok:
                break
            index += 1
            while pos < len(scores) and scores[pos][0] <= index:  # carry the last scored frame's score forward
                current, pos = scores[pos], pos + 1
                cam = None
            if explain is not None and current is not None and current[3]:
                if current[0] == index:  # the flagged frame itself: its map, kept for the frames carried after it
                    cam = explain.cam(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                    explain.counts["video_heatmaps"] += cam is not None
                bgr = explain.video_overlay(bgr, cam)
            if bgr.shape[1] > ANNOTATE_MAX_WIDTH:
                scale = ANNOTATE_MAX_WIDTH / bgr.shape[1]
                bgr = cv2.resize(bgr, (ANNOTATE_MAX_WIDTH, round(bgr.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            if writer is None:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), native or 25.0,
                                         (bgr.shape[1], bgr.shape[0]))
                if not writer.isOpened():
                    raise RsdetectError(f"{out_path}: cannot write an MJPG video here")
            writer.write(draw_score(bgr, current, threshold))
        if writer is not None:
            writer.release()
            writer = None
            tmp.chmod(default_file_mode())
            tmp.replace(out_path)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        tmp.unlink(missing_ok=True)


def draw_score(bgr: np.ndarray, score: Score | None, threshold: float) -> np.ndarray:
    """A frame with a banner: probability, smoothed score, a bar and FLAG in red when flagged."""
    out = bgr.copy()
    h, w = out.shape[:2]
    band = max(14, h // 12)
    cv2.rectangle(out, (0, 0), (w, band), (0, 0, 0), -1)
    if score is None:
        text, colour, fill = "not scored yet", (200, 200, 200), 0.0
    else:
        _, p, s, flag = score
        text = f"p={p:.2f} smooth={s:.2f} thr={threshold:.2f}" + ("  FLAG" if flag else "")
        colour, fill = ((0, 0, 255) if flag else (0, 200, 0)), s
    cv2.rectangle(out, (0, band - 3), (int(w * fill), band), colour, -1)
    scale = band / 30
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    scale *= min(1.0, (w - 8) / max(width, 1))  # small frames: shrink the text rather than clip it
    cv2.putText(out, text, (4, band - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return out


def flagged_rate_chart(cameras: dict[str, dict[str, Any]], threshold: float, k: int) -> bytes:
    """A PNG bar chart of flagged rate per camera (failed cameras hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cameras)
    rates = [cameras[n]["flagged_rate"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.5))
    bars = ax.bar(range(len(names)), rates, color=["#d62728" if r > 0 else "#2ca02c" for r in rates])
    # By position, not by name: cut labels of two long names may read alike, and must stay two bars.
    ax.set_xticks(range(len(names)), [n if len(n) <= CHART_LABEL else n[:CHART_LABEL - 1] + "…" for n in names])
    for bar, n in zip(bars, names, strict=True):
        c = cameras[n]
        if c["failures"]:
            bar.set_hatch("//")
        ax.annotate(f"{c['flagged']}/{c['frames_scored']}" + (f"\n{c['failures']} failed" if c["failures"] else ""),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("flagged rate")
    ax.set_title(f"RS distortion flagged per camera (threshold {threshold:.2f}, smooth K={k})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
