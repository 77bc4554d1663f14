"""`rsdetect watch`: score cameras around the clock, with Prometheus metrics and rolling reports.

Each camera has a reader thread (rsdetect.serve.watch.readers: reconnects with backoff, health); the main thread
takes the frames queued by all cameras, round robin, in batches across cameras, and scores them exactly as
`scan` does (scoring.score_items: same tiles, smoothing, flags, worst frames and rows). Rows go to the rolling
frames log, counts to the metrics (rsdetect.serve.watch.metrics), and summary.json is rewritten every
`summary_interval` s (rsdetect.serve.watch.reports). SIGTERM or Ctrl-C sets a stop flag (no exception is raised
into the middle of a write): readers stop, frames already queued are scored, the reports are completed, and
the watch ends with exit code 0, as does a `duration` or every source ending (files) or reaching max_frames.

Two halves, so that cameras can also be watched on Dask workers (rsdetect.serve.watch.shard): CameraLoop (readers,
batching, scoring) runs here or in a worker's task; WatchRecord (flag counts, row metrics, frames log, summary)
runs in the watching process either way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.preprocess import score_frames
from rsdetect.serve.explain import Explainer
from rsdetect.serve.loaders import LoadedModel
from rsdetect.serve.report_dir import OutputLock, check_report_dir
from rsdetect.serve.reports import Worst, file_stems
from rsdetect.serve.scan import RunResult, ScanOptions
from rsdetect.serve.scoring import CameraState, FlagStats, Row, camera_readout, score_items
from rsdetect.serve.signals import StopSignals
from rsdetect.serve.sources import Source, redact
from rsdetect.serve.watch.metrics import WatchMetrics
from rsdetect.serve.watch.readers import CameraReader, ReadOptions, say
from rsdetect.serve.watch.reports import FlaggedFrames, WatchReports, is_watch_report_file
from rsdetect.threshold import resolve_threshold

# A part-filled batch waits this long for more frames: fewer, fuller model calls (LiteRT reallocates its tensors
# whenever the batch size changes). Interleaved A/B, 4 cameras x 64 frames of 640x480, batch 16, TFLite, on 2
# cores under a load average of 10-17 (noisy): 28.4 / 60.0 frames/s without, 30.8 / 63.4 with. 50 ms of latency
# is nothing next to the seconds a flag takes to matter.
BATCH_FILL_S = 0.05
READER_JOIN_S = 3.0  # at stop, how long to wait for readers; one blocked in a stream read is left (a daemon)


def _seconds(value: float | None, flag: str, allow_none: bool = False) -> None:
    """A duration flag: a finite number of seconds > 0 (nan passes `<= 0` checks, so test isfinite)."""
    if value is None and allow_none:
        return
    if value is None or not (math.isfinite(value) and value > 0):
        raise RsdetectError(f"{flag} must be a number of seconds > 0, got {value}")


@dataclass(frozen=True)
class WatchOptions(ScanOptions):
    """scan's sampling, batching, flagging and video evidence (max_frames: per camera, then that camera's reader
    ends), plus reconnection, rotation and bounds; validated on construction."""

    progress: bool = False  # a service draws no progress bars
    duration: float | None = None  # seconds, then the watch ends
    stall_timeout: float = 10.0
    reconnect_initial: float = 1.0
    reconnect_max: float = 60.0
    rotate_rows: int = 100_000
    rotate_seconds: float | None = None
    keep_rotated: int = 5
    summary_interval: float = 10.0
    queue_frames: int | None = None  # per camera; default: one batch
    keep_flagged: int = 0  # per camera, the newest flagged video frames saved (flagged/); 0: none

    def __post_init__(self) -> None:
        super().__post_init__()  # scan's checks and messages for the flags both share
        for value, flag in ((self.stall_timeout, "--stall-timeout"), (self.reconnect_initial, "--reconnect-initial"),
                            (self.reconnect_max, "--reconnect-max"), (self.summary_interval, "--summary-interval")):
            _seconds(value, flag)
        _seconds(self.duration, "--duration", allow_none=True)
        _seconds(self.rotate_seconds, "--rotate-seconds", allow_none=True)
        if self.reconnect_max < self.reconnect_initial:
            raise RsdetectError(f"--reconnect-max ({self.reconnect_max}) must be >= --reconnect-initial "
                                f"({self.reconnect_initial})")
        if self.rotate_rows < 1:
            raise RsdetectError(f"--rotate-rows must be >= 1, got {self.rotate_rows}")
        if self.keep_rotated < 0:
            raise RsdetectError(f"--keep-rotated must be >= 0, got {self.keep_rotated}")
        if self.keep_flagged < 0:
            raise RsdetectError(f"--keep-flagged must be >= 0 (frames per camera; 0: none), got {self.keep_flagged}")
        if self.keep_flagged and self.analysis is None:
            raise RsdetectError("--keep-flagged saves flagged video frames with their measured `unroll`, which needs "
                                "the video evidence: not with --model-only, nor without params (give --params)")
        if self.queue_frames is not None and self.queue_frames < 1:
            raise RsdetectError(f"queue_frames must be >= 1, got {self.queue_frames}")

    def scan_options(self) -> ScanOptions:
        """The scan part alone (what a Dask task of a sharded watch is handed)."""
        return ScanOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ScanOptions)})

    def read_options(self) -> ReadOptions:
        return ReadOptions(self.every, self.fps, self.max_frames, self.stall_timeout, self.reconnect_initial,
                           self.reconnect_max, self.queue_frames or self.batch, self.analysis,
                           flag_smooth=self.smooth if self.keep_flagged else 0, max_pixels=self.max_pixels)


@dataclass(frozen=True)
class WatchResult(RunResult):
    """Why a watch ended (stopped_by: SIGTERM, SIGINT, duration, sources ended, max-frames)."""

    stopped_by: str


def watch_claim(out_dir: str) -> OutputLock:
    """The report folder checked (nothing, or earlier scan/watch reports; writable) and locked against a
    second watcher or scan, before the metrics port and the model."""
    return OutputLock(check_report_dir(out_dir, is_watch_report_file)).acquire()


class WatchRecord:
    """What the watching process keeps of every camera, wherever its frames are scored (here, or on a Dask
    worker: rsdetect.serve.watch.shard): flag counts, the metrics of scored rows, the frames log and the summary."""

    def __init__(self, sources: list[Source], model: LoadedModel, reports: WatchReports, options: WatchOptions,
                 metrics: WatchMetrics, explain: Explainer | None = None) -> None:
        self.sources = {s.camera: s for s in sources}
        self.model, self.reports, self.options, self.metrics, self.explain = model, reports, options, metrics, explain
        self.threshold = resolve_threshold(options.threshold, model.threshold)
        self.started, self.started_unix = time.monotonic(), time.time()
        self.next_summary = self.started + options.summary_interval
        self.stats = {s.camera: FlagStats() for s in sources}
        self.stems = file_stems(self.sources)
        for s in sources:
            metrics.add_camera(s.camera)

    def record(self, rows: list[Row]) -> None:
        """Count scored rows (flag stats, metrics) and append them to the frames log."""
        now = time.time()
        for row in rows:
            self.stats[row["camera"]].add(row["flag"], now, row["evidence"] == "static", row["shear_px_per_ms"])
            self.metrics.observe(row, now)
        self.reports.log.write(rows)

    def expired(self) -> bool:
        """True once --duration has passed."""
        return self.options.duration is not None and time.monotonic() - self.started >= self.options.duration

    def due(self) -> bool:
        """True when the periodic summary is due (then the next one is scheduled)."""
        now = time.monotonic()
        if now < self.next_summary:
            return False
        self.next_summary = now + self.options.summary_interval
        return True

    def ended(self) -> str:
        """Why a watch whose sources all ended stopped."""
        cap = self.options.max_frames
        capped = cap is not None and all(s.scored >= cap for s in self.stats.values())
        return "max-frames" if capped else "sources ended"

    def summary(self, stopped_by: str | None, health: dict[str, dict[str, Any]],
                worst: dict[str, list[Worst]]) -> dict[str, Any]:
        """summary.json's content: scan's keys per camera and in total, plus each camera's health (a
        CameraHealth.snapshot) and its worst frames, as the caller knows them now."""
        cameras: dict[str, dict[str, Any]] = {}
        for cam, source in self.sources.items():
            stats = self.stats[cam]
            cameras[cam] = {"source": redact(source.spec), "kind": source.kind, **stats.summary(),
                            "last_flagged_time": stats.last_flagged_time,
                            "failures": health[cam]["read_errors"], **health[cam],
                            "readout": camera_readout(source, health[cam]["readout"]),
                            "flagged_frames": (None if self.reports.flagged is None
                                               else self.reports.flagged.summary(cam)),
                            "worst_frames": self.reports.worst.update(self.stems[cam], worst[cam], self.explain)}
        scored = sum(c["frames_scored"] for c in cameras.values())
        flagged = sum(c["flagged"] for c in cameras.values())
        o = self.options
        return {"model": self.model.name, "model_kind": self.model.kind, "threshold": self.threshold,
                "smooth": o.smooth, "every": o.every, "fps": o.fps, "batch": o.batch, "max_frames": o.max_frames,
                "video_evidence": o.analysis is not None,
                "interrupted": stopped_by in ("SIGINT", "SIGTERM"), "exit_code": 0, "cameras": cameras,
                "totals": {"cameras": len(cameras), "failed_cameras": sum(1 for c in cameras.values() if c["failures"]),
                           "cameras_up": sum(c["up"] for c in cameras.values()), "frames_scored": scored,
                           "flagged": flagged, "flagged_rate": flagged / scored if scored else None,
                           "frames_dropped": sum(c["frames_dropped"] for c in cameras.values()),
                           "reconnects": sum(c["reconnects"] for c in cameras.values()),
                           "flagged_frames": None if self.reports.flagged is None else {
                               k: sum(c["flagged_frames"][k] for c in cameras.values())
                               for k in ("saved", "kept", "missed")}},
                "watch": {"running": stopped_by is None, "stopped_by": stopped_by, "started_time": self.started_unix,
                          "updated_time": time.time(), "uptime_s": round(time.monotonic() - self.started, 3),
                          "rotations": self.reports.log.rotations},
                **({"explain": self.explain.summary()} if self.explain is not None else {})}

    def write_summary(self, stopped_by: str | None, health: dict[str, dict[str, Any]],
                      worst: dict[str, list[Worst]], chart: bool = True) -> dict[str, Any]:
        summary = self.summary(stopped_by, health, worst)
        self.reports.write_summary(summary, self.threshold, self.options.smooth, chart)
        return summary


class CameraLoop:
    """Some cameras' readers and the scoring of their frames, round robin in batches across cameras, each row
    handed to `on_rows`: what a watch runs in its own process, or in a Dask task (rsdetect.serve.watch.shard).
    `flagged`: where flagged video frames are saved (--keep-flagged), each before its row is handed on."""

    def __init__(self, sources: list[Source], model: LoadedModel, options: WatchOptions, threshold: float,
                 metrics: WatchMetrics, stop: threading.Event, on_rows: Callable[[list[Row]], None],
                 explain: Explainer | None = None, echo: bool = True, started: float | None = None,
                 flagged: FlaggedFrames | None = None) -> None:
        self.model, self.options, self.stop, self.on_rows = model, options, stop, on_rows
        self.metrics, self.flagged, self.echo = metrics, flagged, echo
        self.stems = file_stems(s.camera for s in sources)
        self.save_failing: set[str] = set()  # cameras whose last flagged frame could not be saved (said once)
        self.ready = threading.Event()
        self.states = {s.camera: CameraState(s, options.smooth, threshold, explain=explain) for s in sources}
        started = time.monotonic() if started is None else started  # streams' timestamps count from it
        self.readers = [CameraReader(s, options.read_options(), metrics, stop, self.ready, started, echo,
                                     tile_size=model.image_size) for s in sources]

    def health(self) -> dict[str, dict[str, Any]]:
        return {r.camera: r.health.snapshot() for r in self.readers}

    def worst(self) -> dict[str, list[Worst]]:
        return {cam: state.worst() for cam, state in self.states.items()}

    def gather(self, limit: int | None = None) -> list[tuple[CameraState, Any]]:
        """Up to `limit` (one batch) queued frames, taken round robin so that a busy camera cannot starve the others."""
        limit = limit or self.options.batch
        items: list[tuple[CameraState, Any]] = []
        more = True
        while more and len(items) < limit:
            more = False
            for r in self.readers:
                if len(items) >= limit:
                    break
                with contextlib.suppress(queue.Empty):
                    items.append((self.states[r.camera], r.queue.get_nowait()))
                    more = True
        return items

    def score(self, items: list[tuple[CameraState, Any]]) -> None:
        """Score a batch (as scan does), save its flagged video frames (--keep-flagged) and hand its rows on."""
        frames = [(state, frame) for state, (frame, _) in items]
        rows = score_items(frames, self.model, self.options.batch, [tiled for _, (_, tiled) in items])
        if self.flagged is not None:
            for (_, (index, _, rgb, evidence)), row in zip(frames, rows, strict=True):
                if row["flag"] and evidence is not None:
                    row["frame_file"] = self.save(row["camera"], index, rgb)
        self.on_rows(rows)

    def save(self, camera: str, index: int, rgb: np.ndarray | None) -> str | None:
        """A flagged video frame saved (flagged/); its path, or None where it came without pixels (counted as
        missed: rsdetect.video.stream) or could not be written (counted, said once until a save succeeds)."""
        assert self.flagged is not None
        if rgb is None:
            self.flagged.missed[camera] += 1
            return None
        try:
            path = self.flagged.save(camera, self.stems[camera], index, rgb)
        except RsdetectError as exc:
            self.flagged.missed[camera] += 1
            if camera not in self.save_failing and self.echo:
                say(camera, f"flagged frames not saved: {exc}")
            self.save_failing.add(camera)
            return None
        self.save_failing.discard(camera)
        self.metrics.saved.labels(camera).inc()
        return path

    def start(self) -> None:
        """Trace the model, then start the readers."""
        # The first model call traces the graph (seconds on CPU): done before the readers start, live streams
        # do not overflow their queues while it runs.
        size = self.model.image_size
        score_frames(self.model.scorer, [np.zeros((size, size, 3), np.uint8)], size, self.options.batch)
        for r in self.readers:
            r.start()

    def run(self, tick: Callable[[], str | None]) -> str:
        """Score until tick() gives a reason to stop (it is called every pass) or every source has ended
        ("sources ended"); returns the reason."""
        o = self.options
        while True:
            if (reason := tick()) is not None:
                return reason
            ended = all(r.done.is_set() for r in self.readers)  # read before gathering: nothing can follow it
            self.ready.clear()
            items = self.gather()
            fill_until = time.monotonic() + BATCH_FILL_S
            while items and len(items) < o.batch and not ended and self.ready.wait(fill_until - time.monotonic()):
                self.ready.clear()
                ended = all(r.done.is_set() for r in self.readers)
                items += self.gather(o.batch - len(items))
            if items:
                self.score(items)
            elif ended:
                # Readers also end when `stop` is set: a signal that lands after tick() stops them, and
                # then the stop, not the sources, is why the watch ends (CI saw a SIGTERM reported as "sources ended").
                return tick() or "sources ended"
            else:
                self.ready.wait(0.1)

    def stop_readers(self) -> None:
        """Tell the readers to stop and wait for them a moment."""
        self.stop.set()
        deadline = time.monotonic() + READER_JOIN_S
        for r in self.readers:
            if r.ident is not None:  # started
                r.join(max(0.0, deadline - time.monotonic()))

    def finish(self) -> None:
        """Stop the readers, score what they had queued; frames a stuck reader queues later are counted as dropped."""
        self.stop_readers()
        while items := self.gather():
            self.score(items)


@contextlib.contextmanager
def watch_session(out_dir: str | Path, options: WatchOptions, lock: OutputLock | None
                  ) -> Iterator[tuple[WatchReports, threading.Event, list[str]]]:
    """The report folder checked and locked (or the caller's held `lock` on it), SIGINT/SIGTERM caught into a
    stop event (the signal's name in the list), and the open reports: what both kinds of watch run inside."""
    out = check_report_dir(out_dir, is_watch_report_file)
    with contextlib.ExitStack() as stack:
        if lock is None:
            stack.enter_context(OutputLock(out))
        elif not (lock.held and lock.out == out):
            raise ValueError(f"lock is not a held claim on {out}")
        # No exception into the middle of a write: a signal sets `stop`; readers end, queued frames are scored.
        signals = stack.enter_context(StopSignals("watch", interrupt=False))
        reports = stack.enter_context(WatchReports(out, options.rotate_rows, options.rotate_seconds,
                                                   options.keep_rotated, options.keep_flagged))
        yield reports, signals.stop, signals.said


def run_watch(sources: list[Source], model: LoadedModel, out_dir: str | Path, options: WatchOptions,
              metrics: WatchMetrics, lock: OutputLock | None = None, explain: Explainer | None = None) -> WatchResult:
    """Watch every source into out_dir until SIGTERM/Ctrl-C, `duration`, or every source ends (files) or
    reaches max_frames; the reports are complete whichever way it ends. `lock`: the caller's watch_claim().
    `explain`: shear columns of flagged frames, heatmaps and de-skewed previews of the worst, as in scan."""
    with watch_session(out_dir, options, lock) as (reports, stop, said):
        record = WatchRecord(sources, model, reports, options, metrics, explain)
        loop = CameraLoop(sources, model, options, record.threshold, metrics, stop, record.record, explain,
                          started=record.started, flagged=reports.flagged)

        def tick() -> str | None:
            if stop.is_set():
                return said[0] if said else "stopped"
            if record.expired():
                return "duration"
            if record.due():
                record.write_summary(None, loop.health(), loop.worst())
            return None

        try:
            loop.start()
            # Every camera listed, down, from the first moment (no chart: 0.2 s).
            record.write_summary(None, loop.health(), loop.worst(), chart=False)
            stopped_by = loop.run(tick)
        except BaseException:  # a model error: stop the readers, keep the error
            loop.stop_readers()
            raise
        loop.finish()
        stopped_by = record.ended() if stopped_by == "sources ended" else stopped_by
        summary = record.write_summary(stopped_by, loop.health(), loop.worst())
    return WatchResult(reports.folder, summary, 0, stopped_by)
