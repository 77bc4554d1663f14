"""`rsdetect watch`'s reports, kept up to date in place while it runs: the files `scan` writes, in the same
layout (rsdetect.serve.reports), but rolling instead of swapped in whole at the end.

- frames.jsonl / frames.csv: the same rows as scan's, appended as frames are scored. Each batch of rows goes
  to the file in one write() of whole lines on an O_APPEND descriptor: a reader, or a watcher killed outright,
  never sees half a row (a write to a regular file is not cut short by a signal; only a full disk or a power
  loss could, and a restart trims such a tail). After `rotate_rows` rows (or `rotate_seconds`) the files are
  rotated: frames.jsonl -> frames.1.jsonl -> ... -> frames.K.jsonl, each rename atomic, the oldest dropped.
- summary.json (rsdetect.io.write_json: temp file and rename) and flagged_rate.png, rewritten periodically.
- worst/<stem>_<frame>.jpg: each camera's worst frames so far, written by reports.save_worst into a staging
  folder and renamed into place; frames that left a camera's top set are removed after the summary that no
  longer names them is in place.
- flagged/<stem>_<frame>.bmp (`--keep-flagged N`): each camera's newest N flagged video frames as decoded
  (lossless, uncompressed), for a correction step to apply the row's `unroll` to (the frames of a live camera are
  not there to be read again); each renamed into place before its row is logged, the oldest removed once a camera
  has N.

A restart begins a new session: the earlier session's frames files are rotated like any other, its
summary.json, worst frames and flagged frames are replaced (its frame numbers start again: a kept frame of
the earlier session would share a new one's name).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.io import atomic_write_bytes, default_file_mode, write_json
from rsdetect.serve.explain import Explainer
from rsdetect.serve.reports import (
    FIELDS,
    Closing,
    Worst,
    csv_cells,
    flagged_rate_chart,
    is_report_file,
    save_worst,
)

ROTATED = re.compile(r"frames\.\d+\.(jsonl|csv)")
LOG_EXTS = ("jsonl", "csv")


def is_watch_report_file(name: str) -> bool:
    """True for the names a watch report folder holds: scan's, plus rotated frames files and flagged frames."""
    return is_report_file(name) or name == "flagged" or bool(ROTATED.fullmatch(name))


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (one call for a regular file, short writes aside)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def trim_partial_line(path: Path) -> bool:
    """Cut a file back to its last newline (a tail left by a power loss mid-write); True if it was cut."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        f.seek(max(0, size - 65536))
        tail = f.read()
        if tail.endswith(b"\n"):
            return False
        cut = tail.rfind(b"\n")
        f.truncate(size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= 65536 else size))
        return True


class RollingLog:
    """frames.jsonl and frames.csv in `folder`, appended in whole rows and rotated after `rotate_rows` rows or
    `rotate_seconds` (None: never by time), keeping `keep` rotated files of each."""

    def __init__(self, folder: Path, rotate_rows: int, rotate_seconds: float | None, keep: int) -> None:
        self.folder, self.rotate_rows, self.rotate_seconds, self.keep = folder, rotate_rows, rotate_seconds, keep
        self.rotations = 0
        self._fds: dict[str, int] = {}
        existing = [folder / f"frames.{ext}" for ext in LOG_EXTS if (folder / f"frames.{ext}").is_file()]
        for path in existing:
            trim_partial_line(path)
        if any(p.stat().st_size for p in existing):
            self._shift()  # an earlier session's rows are kept, as the newest rotated file
        self._open()

    def _open(self) -> None:
        for ext in LOG_EXTS:
            self._fds[ext] = os.open(self.folder / f"frames.{ext}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                     | os.O_APPEND | os.O_CLOEXEC, default_file_mode())
        header = io.StringIO()
        csv.DictWriter(header, fieldnames=FIELDS).writeheader()
        _write_all(self._fds["csv"], header.getvalue().encode())
        self.rows, self.opened = 0, time.monotonic()

    def _close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def _shift(self) -> None:
        """frames.K-1 -> frames.K, ..., frames -> frames.1 (each an atomic rename); frames.K and beyond dropped."""
        for ext in LOG_EXTS:
            for old in self.folder.glob(f"frames.*.{ext}"):
                if ROTATED.fullmatch(old.name) and int(old.name.split(".")[1]) >= self.keep:
                    old.unlink()
            for i in range(self.keep - 1, 0, -1):
                src = self.folder / f"frames.{i}.{ext}"
                if src.exists():
                    os.replace(src, self.folder / f"frames.{i + 1}.{ext}")
            current = self.folder / f"frames.{ext}"
            if current.exists():
                if self.keep:
                    os.replace(current, self.folder / f"frames.1.{ext}")
                else:
                    current.unlink()

    def rotate(self) -> None:
        """Close the current files, shift the rotated ones, start new ones."""
        self._close()
        self._shift()
        self.rotations += 1
        self._open()

    def _due(self) -> bool:
        return self.rows >= self.rotate_rows or (
            self.rotate_seconds is not None and self.rows > 0 and time.monotonic() - self.opened >= self.rotate_seconds)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append rows (a segment never holds more than rotate_rows; None is an empty CSV cell)."""
        while rows:
            if self._due():
                self.rotate()
            chunk, rows = rows[:self.rotate_rows - self.rows], rows[self.rotate_rows - self.rows:]
            text = io.StringIO()
            csv.DictWriter(text, fieldnames=FIELDS).writerows(csv_cells(r) for r in chunk)
            _write_all(self._fds["jsonl"], "".join(json.dumps(r) + "\n" for r in chunk).encode())
            _write_all(self._fds["csv"], text.getvalue().encode())
            self.rows += len(chunk)
        if self._due():  # rotate by time even when a camera is quiet only at the next write; rows: right away
            self.rotate()

    def close(self) -> None:
        self._close()


class WorstFrames:
    """worst/ of a watch report folder: each camera's current worst frames, replaced file by file."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder / "worst"
        shutil.rmtree(self.dir, ignore_errors=True)  # the earlier session's (see the module docstring)
        self.dir.mkdir()
        self._keys: dict[str, tuple] = {}
        self._entries: dict[str, list[dict[str, Any]]] = {}
        self._files: dict[str, set[str]] = {}
        self._stale: set[str] = set()

    def update(self, stem: str, worst: list[Worst],
               explain: Explainer | None = None) -> list[dict[str, Any]]:
        """Publish a camera's worst frames (only if they changed: each new one's heatmap costs a model call);
        their summary entries."""
        key = tuple((i, p) for p, i, *_ in worst)
        if self._keys.get(stem) == key:
            return self._entries[stem]
        with tempfile.TemporaryDirectory(dir=self.dir, prefix=".staging.") as tmp:
            entries = save_worst(Path(tmp), stem, worst, explain)
            made = Path(tmp) / "worst"
            new = {p.name for p in made.iterdir()} if made.is_dir() else set()
            for name in new:
                os.chmod(made / name, default_file_mode())
                os.replace(made / name, self.dir / name)
        self._stale |= self._files.get(stem, set()) - new
        self._keys[stem], self._entries[stem], self._files[stem] = key, entries, new
        return entries

    def prune(self) -> None:
        """Remove frames no current entry names (call once the summary naming the new ones is written)."""
        live = set().union(*self._files.values()) if self._files else set()
        for name in self._stale - live:
            (self.dir / name).unlink(missing_ok=True)
        self._stale = set()


# Lossless (a correction step wants the pixels as decoded) and uncompressed: the scoring thread writes each one, and
# PNG's compression (even its fastest) cost more than the frame's analysis. bench_keep_flagged.py, told 16 ms,
# frames/s with saving over without: PNG 0.74 / 0.82 / 0.28, BMP 0.92 / 0.93 / 0.80 (concourse 1280x720, 7% of
# frames flagged; road 320x240, 33%; 640x480 movers, 64%). Encoding one 1920x1080 frame: PNG 89 ms (1.3 MB), BMP
# 7 ms (6.2 MB): --keep-flagged N bounds the disk
FLAGGED_EXT = ".bmp"


class FlaggedFrames:
    """flagged/ of a watch report folder: each camera's newest `keep` flagged video frames, lossless, with counts.

    A frame is written to a dot-file and renamed into place (a correction step polling the folder never reads half
    a frame); the caller logs its row after `save` returns, so a row that names a file was written after it."""

    def __init__(self, folder: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dir, self.keep = folder / "flagged", keep
        shutil.rmtree(self.dir, ignore_errors=True)  # the earlier session's (see the module docstring)
        self.dir.mkdir()
        self._kept: dict[str, deque[str]] = defaultdict(deque)
        self.saved: dict[str, int] = defaultdict(int)
        self.missed: dict[str, int] = defaultdict(int)  # flagged, not saved: came without pixels, or unwritable

    def save(self, camera: str, stem: str, index: int, rgb: np.ndarray) -> str:
        """Write a camera's flagged frame; its path relative to the report folder. RsdetectError (one line) where it
        cannot be written (a full disk: nothing half-written is left; the caller counts it and goes on)."""
        name = f"{stem}_{index}{FLAGGED_EXT}"
        path, tmp = self.dir / name, self.dir / f".{name}.tmp"
        ok, encoded = cv2.imencode(FLAGGED_EXT, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        try:
            if not ok:
                raise OSError("encoding failed")
            tmp.write_bytes(encoded.tobytes())
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):  # nothing half-written left (where there is a folder to leave it in)
                tmp.unlink()
            raise RsdetectError(f"{path}: cannot be written ({exc.strerror or exc})") from None
        kept = self._kept[camera]
        kept.append(name)
        self.saved[camera] += 1
        while len(kept) > self.keep:
            (self.dir / kept.popleft()).unlink(missing_ok=True)
        return f"flagged/{name}"

    def summary(self, camera: str) -> dict[str, int]:
        """summary.json's `flagged_frames` of a camera: saved this session, on disk now, flagged but not saved."""
        return {"saved": self.saved[camera], "kept": len(self._kept[camera]), "missed": self.missed[camera]}


class WatchReports(Closing):
    """The report folder of a running watch: the rolling frames log, worst frames, summary and chart."""

    def __init__(self, folder: Path, rotate_rows: int, rotate_seconds: float | None, keep: int,
                 keep_flagged: int = 0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.worst = WorstFrames(folder)
        self.flagged = FlaggedFrames(folder, keep_flagged) if keep_flagged else None
        if self.flagged is None:
            shutil.rmtree(folder / "flagged", ignore_errors=True)  # an earlier session's: its frame numbers are gone
        self.log = RollingLog(folder, rotate_rows, rotate_seconds, keep)

    def write_summary(self, summary: dict[str, Any], threshold: float, smooth: int, chart: bool = True) -> None:
        """summary.json (and the chart) replaced atomically; then the worst frames it no longer names go."""
        write_json(self.folder / "summary.json", summary)
        if chart:
            atomic_write_bytes(self.folder / "flagged_rate.png",
                               flagged_rate_chart(summary["cameras"], threshold, smooth))
        self.worst.prune()

    def close(self) -> None:
        self.log.close()

