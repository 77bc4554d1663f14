"""`rsdetect scan`: score frames from images, videos and streams with a registered or exported model.

Frames are sampled per source (rsdetect.serve.sources), batched, scored (rsdetect.serve.loaders, rsdetect.preprocess),
smoothed per camera (rolling mean over the last K scored frames) and flagged at a threshold. The report set
(rsdetect.serve.reports) is written into a staging folder that replaces the report folder whole at the end, so the
folder always holds one scan's reports. A source that fails is reported and counted while the others go on;
Ctrl-C or SIGTERM stops scoring and still writes the reports of what was scored.
"""
from __future__ import annotations

import os

import contextlib
import heapq
import math
import signal
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Callable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from rsdetect.errors import RsdetectError
from rsdetect.serve.decoder import ReadRequest, decoded_frames
from rsdetect.serve.explain import Explainer
from rsdetect.io import staged_dir
from rsdetect.serve.loaders import LoadedModel
from rsdetect.serve.report_dir import OutputLock, check_report_dir
from rsdetect.preprocess import Box, box_text, score_tiled, to_tiles
from rsdetect.serve.reports import (FrameLog, Score, annotate_video, file_stems, flagged_rate_chart, is_report_file,
                              save_worst, shear_columns, write_summary)
from rsdetect.serve.sources import FrameItem, Source, SourceError, read_ahead, redact

DEFAULT_MODEL = "models:/rs-detector@champion"
DEFAULT_THRESHOLD = 0.5
WORST_PER_CAMERA = 5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Row = dict[str, Any]


def report_failure(camera: str, message: str) -> None:
    """A camera's failure as one line on stderr (above any progress bar)."""
    tqdm.write(f"scan: {camera}: {message}", file=sys.stderr)


# ---------------------------------------------------------------- scores

class RollingMean:
    """The mean of the last k values pushed (of all of them while fewer than k): the per-camera smoothing."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise RsdetectError(f"--smooth must be >= 1, got {k}")
        self._window: deque[float] = deque(maxlen=k)

    def push(self, value: float) -> float:
        """Add a value; the mean of the window now."""
        self._window.append(value)
        return float(np.mean(self._window))


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


def camera_summary(flags: list[bool] | np.ndarray, errors: list[str]) -> dict[str, Any]:
    """frames_scored, flagged, flagged_rate (None if nothing scored), longest_flagged_run and failures."""
    flags = np.asarray(flags, bool)
    n = int(flags.size)
    return {"frames_scored": n, "flagged": int(flags.sum()), "flagged_rate": float(flags.mean()) if n else None,
            "longest_flagged_run": longest_run(flags), "failures": len(errors), "errors": list(errors)}


@dataclass
class CameraState:
    """Running per-camera state: smoothing window, flags, worst frames and failures."""

    source: Source
    k: int
    threshold: float
    keep_scores: bool = False
    explain: Explainer | None = None  # shear columns of flagged frames
    echo: bool = True  # print failures as they happen; a Dask worker leaves that to the main process (shard.py)
    flags: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)  # for annotation only
    _window: RollingMean = field(init=False)
    _worst: list = field(default_factory=list)  # min-heap of (probability, -frame_index, frame_index, rgb)

    def __post_init__(self) -> None:
        self._window = RollingMean(self.k)

    def fail(self, message: str) -> None:
        """Count a failure and report it as one line on stderr (unless echo is off)."""
        self.errors.append(message)
        if self.echo:
            report_failure(self.source.camera, message)

    def add(self, frame_index: int, timestamp: float | None, prob: float, rgb: np.ndarray, tile: Box) -> Row:
        """Score one frame (its probability, from the tile `tile`) into the running state; returns its output row."""
        smoothed = self._window.push(prob)
        flag = smoothed >= self.threshold
        # Measured before the frame is counted: a Ctrl-C during the estimate must not count a frame without a row.
        shear = shear_columns(self.explain, rgb, flag)
        self.flags.append(flag)
        if self.keep_scores:
            self.scores.append((frame_index, prob, smoothed, flag))
        item = (prob, -frame_index, frame_index, rgb)  # ties: the earlier frame ranks worse
        if len(self._worst) < WORST_PER_CAMERA:
            heapq.heappush(self._worst, item)
        elif item[:2] > self._worst[0][:2]:
            heapq.heapreplace(self._worst, item)
        return {"camera": self.source.camera, "frame_index": frame_index,
                "timestamp_s": None if timestamp is None else round(float(timestamp), 6),
                "probability": round(prob, 6), "smoothed": round(smoothed, 6), "flag": bool(flag),
                "tile": box_text(tile), "source": self.source.frame_source(frame_index), **shear}

    def worst(self) -> list[tuple[float, int, np.ndarray]]:
        """The highest-probability frames, worst first: (probability, frame_index, rgb)."""
        return [(p, i, rgb) for p, _, i, rgb in sorted(self._worst, key=lambda t: t[:2], reverse=True)]


# ---------------------------------------------------------------- options, results, stopping

@dataclass(frozen=True)
class ScanOptions:
    """How to sample, batch, smooth and flag; validated on construction (before any file is touched)."""

    every: int = 1
    fps: float | None = None
    batch: int = 16
    smooth: int = 1
    threshold: float | None = None
    annotate: bool = False
    max_frames: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.every < 1:
            raise RsdetectError(f"--every must be >= 1, got {self.every}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):  # nan passes `<= 0`
            raise RsdetectError(f"--fps must be a number of frames per second > 0, got {self.fps}")
        if self.fps is not None and self.every != 1:
            raise RsdetectError("give either --every or --fps, not both")
        if self.batch < 1:
            raise RsdetectError(f"--batch must be >= 1, got {self.batch}")
        if self.smooth < 1:
            raise RsdetectError(f"--smooth must be >= 1, got {self.smooth}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise RsdetectError(f"--threshold must be within [0, 1], got {self.threshold}")
        if self.max_frames is not None and self.max_frames < 1:
            raise RsdetectError(f"--max-frames must be >= 1, got {self.max_frames}")


@dataclass(frozen=True)
class ScanResult:
    """What a scan wrote and how it ended (exit_code: 0 ok, 3 some source failed, 130 Ctrl-C, 143 SIGTERM)."""

    out_dir: Path
    summary: dict[str, Any]
    exit_code: int
    interrupted: bool


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM while scanning; a KeyboardInterrupt, so Ctrl-C handling covers both."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process its signal ended: 130 Ctrl-C, 143 SIGTERM."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


class StopSignals:
    """While active, the first SIGINT or SIGTERM raises Interrupted; later ones are deferred (only announced),
    as are any after `defer()`, so the reports of what was scored are written whole however often the user
    presses Ctrl-C. Outside the main thread, where handlers cannot be set, it does nothing."""

    active: Optional[StopSignals] = None  # the innermost one whose handlers are set (signals are process-wide)

    def __init__(self) -> None:
        self.deferring = False
        self._saved: dict[int, Any] = {}
        self._outer: Optional[StopSignals] = None
        self._holding = False
        self._pending: Optional[int] = None

    def defer(self) -> None:
        """From now on, signals no longer interrupt."""
        self.deferring = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A block a signal must not cut in two: a signal that arrives in it interrupts when the block ends."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending is not None and not self.deferring:
            self.deferring = True
            raise Interrupted(self._pending)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring:
            tqdm.write(f"scan: {signal.Signals(signum).name}: finishing the reports first", file=sys.stderr)
            return
        if self._holding:
            if self._pending is None:
                self._pending = signum
            return
        self.deferring = True
        raise Interrupted(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._saved = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
            self._outer, StopSignals.active = StopSignals.active, self
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        if self._saved:
            StopSignals.active = self._outer
        self._saved = {}


def uninterrupted() -> contextlib.AbstractContextManager[None]:
    """The active StopSignals' held() block; nothing to hold where none is active (a worker process, a thread)."""
    return StopSignals.active.held() if StopSignals.active is not None else contextlib.nullcontext()


def claim(out_dir: str | os.PathLike) -> OutputLock:
    """The report folder checked (a folder of earlier reports or nothing; writable) and locked against a
    second scan; done before the model loads, so a wrong --out fails in a moment, not after it."""
    return OutputLock(check_report_dir(out_dir, is_report_file)).acquire()


# ---------------------------------------------------------------- scanning

TiledItem = tuple[int, Optional[float], np.ndarray, tuple[np.ndarray, list[Box]]]  # a FrameItem and its to_tiles


def score_items(items: list[tuple[CameraState, FrameItem]], model: LoadedModel, tiles_per_call: int,
                tiled: Optional[list[tuple[np.ndarray, list[Box]]]] = None) -> list[Row]:
    """Score frames, of one camera or several, together: each frame whole (S x S tiles at the training scale, the
    max over them; preprocess.score_tiled), added to its camera's state; one row per frame, in order.
    `tiled`: the frames' to_tiles where already cut (scan cuts them in its reader thread); else cut here.
    (`watch` batches across cameras through this, so both commands score and record frames the same way.)"""
    if tiled is None:
        tiled = [to_tiles(rgb, model.image_size) for _, (_, _, rgb) in items]
    probs, boxes = score_tiled(model.scorer, tiled, tiles_per_call)
    if not np.all(np.isfinite(probs)):  # a broken export must not pass as "nothing flagged"
        state, (index, _, _) = items[0]
        raise RsdetectError(f"model returned non-finite probabilities for {state.source.camera} frame {index}+")
    return [state.add(index, ts, float(p), rgb, box)
            for (state, (index, ts, rgb)), p, box in zip(items, probs, boxes, strict=True)]


def _score_batch(batch: list[TiledItem], state: CameraState, model: LoadedModel, emit: Callable[[Row], None],
                 tiles_per_call: int) -> None:
    """Score one camera's batch of tiled frames (score_items) and emit one row per frame."""
    items = [(state, (index, ts, rgb)) for index, ts, rgb, _ in batch]
    for row in score_items(items, model, tiles_per_call, [t for *_, t in batch]):
        emit(row)


def scan_source(state: CameraState, model: LoadedModel, options: ScanOptions, emit: Callable[[Row], None]) -> None:
    """Score one source in batches; a SourceError is counted (frames read before it are still scored)."""
    source = state.source
    total = source.estimate_frames(options.every, options.fps, options.max_frames)
    # Decoded in a process of this camera's own (rsdetect.serve.decoder): a decoder crash ends this camera only.
    frames = decoded_frames(source, state.fail, ReadRequest(options.every, options.fps, options.max_frames))
    # The reader thread decodes the next batch and cuts it into tiles while this one is scored (OpenCV's decode
    # and resize release the GIL): the model's threads then wait on nothing else (bench_scan.py).
    tiled = ((index, ts, rgb, to_tiles(rgb, model.image_size)) for index, ts, rgb in frames)
    batches = read_ahead(tiled, options.batch)
    with tqdm(desc=source.camera, total=total, unit="frame", disable=not options.progress, file=sys.stderr) as bar, \
            contextlib.closing(frames), contextlib.closing(batches):  # exits in reverse: the reader stops first
        try:
            for batch in batches:
                # A signal between counting a frame in its state and writing its row would leave summary.json
                # counting a frame frames.jsonl lacks (seen in CI: 46 against 45): the batch is scored whole first.
                with uninterrupted():
                    _score_batch(batch, state, model, emit, options.batch)
                bar.update(len(batch))
        except SourceError as exc:
            state.fail(str(exc))


# Scores cameras: (fresh states in source order, emit(row), done(state)). It emits each camera's rows in frame
# order and then calls done with its finished state, camera after camera in source order (a camera cut short by
# Ctrl-C may have emitted rows without done). scan_in_order is the default; rsdetect.serve.shard spreads cameras over
# Dask workers.
CameraRunner = Callable[[list[CameraState], Callable[[Row], None], Callable[[CameraState], None]], None]


def scan_in_order(model: LoadedModel, options: ScanOptions) -> CameraRunner:
    """The single-process runner: each camera in turn, in this process."""
    def run(states: list[CameraState], emit: Callable[[Row], None], done: Callable[[CameraState], None]) -> None:
        for state in states:
            scan_source(state, model, options, emit)
            done(state)
    return run


def _annotate(state: CameraState, stage: Path, rel: str, threshold: float, max_frames: int | None,
              explain: Explainer | None = None) -> bool:
    """Write a camera's annotated video into the staging folder; False if its file vanished since scoring."""
    hit_cap = max_frames is not None and len(state.flags) >= max_frames
    try:
        annotate_video(state.source.spec, state.scores, threshold, stage / rel, state.scores[-1][0] if hit_cap else None,
                       explain)
        return True
    except SourceError as exc:  # the file vanished between the passes: the scores still stand
        tqdm.write(f"scan: {state.source.camera}: not annotated: {exc}", file=sys.stderr)
        return False


def run_scan(sources: list[Source], model: LoadedModel, out_dir: str | os.PathLike,
             options: ScanOptions = ScanOptions(), lock: OutputLock | None = None,
             explain: Explainer | None = None, cameras: CameraRunner | None = None) -> ScanResult:
    """Scan every source into out_dir (replaced whole by this scan's reports); Ctrl-C or SIGTERM stops scoring
    and still writes what was scored (exit_code 130 / 143). `lock`: the caller's claim() on out_dir, if any.
    `explain`: shear estimates of flagged frames, heatmaps and de-skewed previews of the worst (rsdetect.serve.explain).
    `cameras`: who scores the cameras (default: this process, in order; rsdetect.serve.shard: Dask workers)."""
    out = check_report_dir(out_dir, is_report_file)
    threshold = options.threshold if options.threshold is not None else (
        model.threshold if model.threshold is not None else DEFAULT_THRESHOLD)
    states = {s.camera: CameraState(s, options.smooth, threshold, keep_scores=options.annotate and s.annotatable,
                                    explain=explain) for s in sources}
    stems = file_stems(states)
    with contextlib.ExitStack() as stack:
        if lock is None:
            stack.enter_context(OutputLock(out))
        elif not (lock.held and lock.out == out):
            raise ValueError(f"lock is not a held claim on {out}")
        signals = stack.enter_context(StopSignals())
        stage = stack.enter_context(staged_dir(out))  # exits first: the swap happens under deferred signals
        exit_code = 0
        annotated: dict[str, str] = {}

        def done(state: CameraState) -> None:
            name, rel = state.source.camera, f"annotated/{stems[state.source.camera]}.avi"
            states[name] = state  # a worker's state comes back as a copy
            if explain is not None and state.explain is not explain:  # so does its Explainer: keep its counts
                explain.add_counts(state.explain)
                state.explain = explain
            if state.keep_scores and state.scores and \
                    _annotate(state, stage, rel, threshold, options.max_frames, explain):
                annotated[name] = rel

        with FrameLog(stage) as log:
            try:
                (cameras or scan_in_order(model, options))(list(states.values()), log.write, done)
            except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM (Interrupted), or a KeyboardInterrupt from below
                signals.defer()
                exit_code = interrupt_exit_code(exc)
                tqdm.write("scan: interrupted; writing what was scored so far", file=sys.stderr)
        signals.defer()
        summary = _write_reports(stage, states, stems, annotated, model, options, threshold, exit_code, explain)
    return ScanResult(out, summary, summary["exit_code"], bool(exit_code))


def _write_reports(stage: Path, states: dict[str, CameraState], stems: dict[str, str], annotated: dict[str, str],
                   model: LoadedModel, options: ScanOptions, threshold: float, exit_code: int,
                   explain: Explainer | None = None) -> dict[str, Any]:
    """Worst frames, summary.json and the chart into the staging folder; the summary."""
    cameras: dict[str, dict[str, Any]] = {}
    for name, state in states.items():
        cameras[name] = {"source": redact(state.source.spec), "kind": state.source.kind,
                         **camera_summary(state.flags, state.errors),
                         "worst_frames": save_worst(stage, stems[name], state.worst(), explain)}
        if name in annotated:
            cameras[name]["annotated_video"] = annotated[name]
    failed = sum(1 for c in cameras.values() if c["failures"])
    interrupted = bool(exit_code)
    exit_code = exit_code or (3 if failed else 0)
    scored = sum(c["frames_scored"] for c in cameras.values())
    flagged = sum(c["flagged"] for c in cameras.values())
    summary = {"model": model.name, "model_kind": model.kind, "threshold": threshold, "smooth": options.smooth,
               "every": options.every, "fps": options.fps, "batch": options.batch, "max_frames": options.max_frames,
               "interrupted": interrupted, "exit_code": exit_code, "cameras": cameras,
               "totals": {"cameras": len(cameras), "failed_cameras": failed, "frames_scored": scored,
                          "flagged": flagged, "flagged_rate": flagged / scored if scored else None}}
    if explain is not None:
        summary["explain"] = explain.summary()
    write_summary(stage, summary)
    (stage / "flagged_rate.png").write_bytes(flagged_rate_chart(cameras, threshold, options.smooth))
    return summary
