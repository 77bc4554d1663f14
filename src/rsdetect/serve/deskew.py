"""`rsdetect deskew`: a scan's flagged video frames with their measured rolling-shutter displacement undone, as files a
correction step (or a reviewer) takes.

A flagged video frame's row in frames.jsonl carries `unroll` (rsdetect.video.evidence.unroll_model): how the
camera's rows and each mover moved during the readout, measured where the frame was decoded. This reads a report
folder, decodes each camera's video file again (in a decoder process of its own, as scan does: a file that crashes
the decoder costs only its camera) and writes every such frame with it undone, `<camera>_<frame>.png` (lossless),
with `originals` the frame as decoded beside it (`<camera>_<frame>_original.png`). The folder is written whole or
not at all (io.staged_dir).

A row with a `frame_file` (a watch's --keep-flagged: the frame as decoded, saved in the report folder) is read from
that file instead: a live camera's frames cannot be read again. A stream's row without one is not read again (scan
and watch keep its worst frames with their previews), nor is a file that is no longer where the row says; such rows,
frames a file no longer holds and saved frames no longer kept are skipped: counted and said in one line each.
"""
from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.io import staged_dir
from rsdetect.serve.decoder import decoded_frames
from rsdetect.serve.reports import file_stems
from rsdetect.serve.sources import SourceError, VideoSource, is_url
from rsdetect.video.evidence import unroll


@dataclass
class Deskewed:
    """What `deskew_report` wrote and skipped."""
    frames: int = 0                                         # flagged frames written undone
    cameras: int = 0
    skipped: int = 0                                        # flagged frames with an unroll that were not written
    messages: list[str] = field(default_factory=list)       # one line per camera or frame skipped


def flagged_rows(report: Path) -> list[dict[str, Any]]:
    """The rows of `report`/frames.jsonl that carry an `unroll` (flagged video frames); RsdetectError (one line) for
    a folder without it or a line that is not a row."""
    path = report / "frames.jsonl"
    if not path.is_file():
        raise RsdetectError(f"{path}: missing; give the --out folder of a scan or watch")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                if row.get("unroll") is not None:
                    rows.append({**{k: row[k] for k in ("camera", "source", "frame_index")}, "unroll": row["unroll"],
                                 "frame_file": row.get("frame_file")})
            except (json.JSONDecodeError, AttributeError, KeyError):
                raise RsdetectError(f"{path}: line {n} is not a frame row (a scan writes one JSON object a line, with "
                                    "camera, source and frame_index)") from None
    return rows


def write_frame(stem: Path, rgb: np.ndarray, model: dict, originals: bool) -> str | None:
    """`stem`.png: the frame with `model` applied (and `stem`_original.png, the frame as decoded); None, or why not."""
    try:
        fixed = unroll(rgb, model)
    except RsdetectError as exc:  # another video at the same path: another frame size
        return str(exc)
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # a row edited by hand, or another tool's
        return f"its unroll is not one scan writes ({type(exc).__name__}: {exc})"
    for path, image in ((f"{stem}.png", fixed), *(((f"{stem}_original.png", rgb),) if originals else ())):
        if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):  # a full disk: nothing half-written
            raise RsdetectError(f"{path}: cannot be written")
    return None


def deskew_report(report: str | Path, out: str | Path, originals: bool = False) -> Deskewed:
    """Write each flagged video frame of the scan or watch report `report` with its `unroll` applied into the folder
    `out` (replaced whole); the counts and what was skipped."""
    rows = flagged_rows(Path(report))
    by_camera: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    saved: dict[str, list[dict[str, Any]]] = defaultdict(list)  # rows whose frame a watch saved
    for row in rows:
        if row["frame_file"] is not None:
            saved[row["camera"]].append(row)
        else:
            by_camera[(row["camera"], row["source"])][row["frame_index"]] = row["unroll"]
    cameras = {*(camera for camera, _ in by_camera), *saved}
    stems = file_stems(cameras)
    done = Deskewed(cameras=len(cameras))
    with staged_dir(out) as stage:

        def write(camera: str, index: int, rgb: np.ndarray, model: dict) -> None:
            """One flagged frame undone into the stage: counted as written, or as skipped with why."""
            why = write_frame(stage / f"{stems[camera]}_{index}", rgb, model, originals)
            if why is None:
                done.frames += 1
            else:
                done.skipped += 1
                done.messages.append(f"{camera}: frame {index}: {why}")

        for camera, kept in saved.items():
            gone = 0
            for row in kept:
                path = Path(report) / row["frame_file"]
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
                if bgr is None:
                    if path.is_file():
                        done.skipped += 1
                        done.messages.append(f"{camera}: frame {row['frame_index']}: {path}: not an image")
                    else:
                        gone += 1
                    continue
                write(camera, row["frame_index"], cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), row["unroll"])
            if gone:
                done.skipped += gone
                done.messages.append(f"{camera}: {gone} saved flagged frames no longer in {report}/flagged (a watch "
                                     "keeps each camera's newest --keep-flagged; a restart starts again)")
        for (camera, source), wanted in by_camera.items():
            video = None if is_url(source) else VideoSource.claim(camera, source)
            if video is None:
                why = "a stream's frames cannot be read again" if is_url(source) else "no video file there"
                done.skipped += len(wanted)
                done.messages.append(f"{camera}: {source}: {why}; {len(wanted)} flagged frames skipped")
                continue
            errors: list[str] = []
            try:
                frames = decoded_frames(video, errors.append)
                with contextlib.closing(frames):  # stops its decoder process once the last frame wanted is read
                    for index, _, rgb, _ in frames:
                        model = wanted.pop(index, None)
                        if model is not None and rgb is not None:
                            write(camera, index, rgb, model)
                        if not wanted:
                            break
            except SourceError as exc:
                errors.append(str(exc))
            if wanted:
                done.skipped += len(wanted)
                said = f" ({errors[-1]})" if errors else ""
                done.messages.append(f"{camera}: {len(wanted)} flagged frames not found in {source}{said}")
    return done
