"""`rsdetect watch`'s camera readers: one thread per camera reads its source (rsdetect.serve.sources) into a small
queue for the scorer, and keeps the camera's health (up/down, reconnects, read errors, last frame time).

A stream that closes, stalls (no frame for `stall_timeout` s: FFmpeg's read timeout ends the read) or cannot
be opened is reconnected with exponential backoff (initial, doubling, capped), reset by the next frame. Files
and image folders are read once. While scoring keeps up, a live stream's queue never fills; when it falls
behind, the oldest queued frame is dropped and counted (a live camera cannot wait, and an hour-old frame is
worth less than the current one); a file's reader waits instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rsdetect import limits
from rsdetect.config import VideoAnalysisParams
from rsdetect.preprocess import Box, to_tiles
from rsdetect.serve.decoder import Decoded, ReadRequest, decoded_frames
from rsdetect.serve.scoring import WORST_PER_CAMERA
from rsdetect.serve.sources import Source, SourceError, StreamSource, redact
from rsdetect.serve.watch.metrics import WatchMetrics

RECENT_ERRORS = 20  # the messages summary.json keeps per camera; the counts are kept in full
# A queued frame: a Decoded (frame and evidence) and, for a still, its to_tiles (None: the scorer cuts them).
TiledItem = tuple[Decoded, tuple[np.ndarray, list[Box]] | None]


def say(camera: str, message: str) -> None:
    """One line on stderr, as scan reports a source's failures."""
    print(f"watch: {camera}: {message}", file=sys.stderr, flush=True)


@dataclass
class CameraHealth:
    """A camera's state as its reader sees it; written by the reader, read by the summary (under `lock`)."""

    up: bool = False
    finished: bool = False
    connections: int = 0
    reconnects: int = 0
    read_errors: int = 0
    dropped: int = 0
    last_frame_time: float | None = None
    readout: dict[str, Any] | None = None  # as the camera's decoder measures it
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))
    notes: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        """The summary.json fields of this camera's health."""
        with self.lock:
            return {"up": self.up, "finished": self.finished, "connections": self.connections,
                    "reconnects": self.reconnects, "read_errors": self.read_errors, "frames_dropped": self.dropped,
                    "last_frame_time": self.last_frame_time, "readout": self.readout,
                    "errors": list(self.errors), "notes": list(self.notes)}


@dataclass(frozen=True)
class ReadOptions:
    """How readers sample, cap and reconnect (validated by WatchOptions)."""

    every: int
    fps: float | None
    max_frames: int | None
    stall_timeout: float
    reconnect_initial: float
    reconnect_max: float
    queue_frames: int
    analysis: VideoAnalysisParams | None = None  # video evidence (rsdetect.video), measured in the decoder process
    flag_smooth: int = 0  # K > 0: flagged video frames (K-frame smoothing) come with their pixels (--keep-flagged)
    max_pixels: int = dataclasses.field(default_factory=limits.max_pixels)  # the decode limit, handed on


class CameraReader(threading.Thread):
    """Reads one camera into `queue` until `stop` is set, its source ends (files) or max_frames are read."""

    def __init__(self, source: Source, options: ReadOptions, metrics: WatchMetrics, stop: threading.Event,
                 ready: threading.Event, started: float, echo: bool = True, tile_size: int | None = None) -> None:
        super().__init__(name=f"watch-{source.camera}", daemon=True)  # daemon: one stuck in a C read cannot block exit
        self.source, self.options, self.metrics = source, options, metrics
        self.stop_event, self.ready, self.started = stop, ready, started
        self.echo = echo  # off in a Dask worker: the watching process says the errors (rsdetect.serve.watch.shard)
        self.live = isinstance(source, StreamSource)
        # With tile_size, each queued frame comes with its to_tiles, cut here: the resizing then overlaps the
        # model instead of holding up the scoring thread (as scan's read_ahead does; bench_watch.py).
        self.tile_size = tile_size
        self.queue: queue.Queue[TiledItem] = queue.Queue(maxsize=options.queue_frames)
        self.health = CameraHealth()
        self.done = threading.Event()

    @property
    def camera(self) -> str:
        return self.source.camera

    # ------------------------------------------------ health

    def _error(self, message: str) -> None:
        with self.health.lock:
            self.health.read_errors += 1
            self.health.errors.append(message)
        self.metrics.read_errors.labels(self.camera).inc()
        self._say(message)

    def _say(self, message: str) -> None:
        if self.echo:
            say(self.camera, message)

    def _set_up(self, up: bool) -> None:
        with self.health.lock:
            self.health.up = up
            self.health.connections += up
        self.metrics.up.labels(self.camera).set(int(up))

    def _drop(self) -> None:
        with self.health.lock:
            self.health.dropped += 1
        self.metrics.dropped.labels(self.camera).inc()

    # ------------------------------------------------ reading

    def _frames(self) -> Generator[Decoded, None, None]:
        """Frames decoded in a process of this camera's own (rsdetect.serve.decoder): a decoder that crashes is a
        SourceError here, so a stream reconnects with backoff and a file is marked down, as for any read failure.
        The stall timeout is FFmpeg's read timeout; the cap is counted here, across reconnects."""
        o = self.options
        return decoded_frames(self.source, self._error,
                              ReadRequest(o.every, o.fps, None, round(o.stall_timeout * 1000) if self.live else None,
                                          o.analysis, WORST_PER_CAMERA, flag_smooth=o.flag_smooth,
                                          max_pixels=o.max_pixels),
                              on_note=self._note, on_readout=self._readout)

    def _note(self, message: str) -> None:
        """Something counted that is not a failure (a video a few frames short of its header): kept and said."""
        with self.health.lock:
            self.health.notes.append(message)
        self._say(f"note: {message}")

    def _readout(self, readout: dict[str, Any]) -> None:
        with self.health.lock:
            self.health.readout = readout
        self.metrics.set_readout(self.camera, readout)

    def _put(self, frame: Decoded) -> None:
        """Queue a frame for scoring: a stream drops its oldest queued frame when full, a file waits."""
        still = frame[3] is None and self.tile_size is not None
        item: TiledItem = (frame, to_tiles(frame[2], self.tile_size) if still else None)  # type: ignore[arg-type]
        while not self.stop_event.is_set():
            try:
                self.queue.put_nowait(item)
                self.ready.set()
                return
            except queue.Full:
                if not self.live:
                    time.sleep(0.01)
                    continue
            with contextlib.suppress(queue.Empty):
                self.queue.get_nowait()
                self._drop()
        self._drop()  # stopping: read but never scored

    def run(self) -> None:
        o = self.options
        delay, offset, kept, attempt = o.reconnect_initial, 0, 0, 0
        try:
            while not self.stop_event.is_set():
                if attempt:
                    with self.health.lock:
                        self.health.reconnects += 1
                    self.metrics.reconnects.labels(self.camera).inc()
                attempt += 1
                got, last = 0, offset - 1
                try:
                    with contextlib.closing(self._frames()) as frames:
                        for index, ts, rgb, evidence in frames:
                            now = time.time()
                            if not got:
                                self._set_up(True)
                            got, delay, last = got + 1, o.reconnect_initial, offset + index
                            with self.health.lock:
                                self.health.last_frame_time = now
                            self.metrics.last_frame.labels(self.camera).set(now)
                            # Streams: frame numbers and times go on across reconnects (seconds since the watch began).
                            self._put((last, time.monotonic() - self.started if self.live else ts, rgb, evidence))
                            kept += 1
                            if self.stop_event.is_set() or (o.max_frames is not None and kept >= o.max_frames):
                                break
                except SourceError as exc:
                    self._error(str(exc))
                except Exception as exc:  # noqa: BLE001  (cv2.error and kin: this camera's failure, not the watch's)
                    self._error(f"{redact(self.source.spec)}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                self._set_up(False)
                capped = o.max_frames is not None and kept >= o.max_frames
                if not self.live or capped or self.stop_event.is_set():
                    break
                offset = last + 1
                self._say(f"stream {'dropped' if got else 'unavailable'}; reconnecting in {delay:.1f} s")
                if self.stop_event.wait(delay):
                    break
                delay = min(delay * 2, o.reconnect_max)
        finally:
            with self.health.lock:
                self.health.finished = True
                self.health.up = False
            self.metrics.up.labels(self.camera).set(0)
            self.done.set()
            self.ready.set()
