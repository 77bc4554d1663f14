"""`rsdetect scan`: score frames from images, videos and streams with a registered or exported model.

Frames are sampled per source (rsdetect.serve.sources), batched, scored (rsdetect.serve.loaders, rsdetect.preprocess),
smoothed per camera (rolling mean over the last K scored frames) and flagged at a threshold. The report set
(rsdetect.serve.reports) is written into a staging folder that replaces the report folder whole at the end, so the
folder always holds one scan's reports. A source that fails is reported and counted while the others go on;
Ctrl-C or SIGTERM stops scoring and still writes the reports of what was scored.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rsdetect import limits
from rsdetect.config import VideoAnalysisParams
from rsdetect.errors import RsdetectError
from rsdetect.io import staged_dir
from rsdetect.preprocess import Box, to_tiles
from rsdetect.serve.decoder import Decoded, ReadRequest, decoded_frames
from rsdetect.serve.explain import Explainer
from rsdetect.serve.loaders import LoadedModel
from rsdetect.serve.report_dir import OutputLock, check_report_dir
from rsdetect.serve.reports import (
    FrameLog,
    annotate_video,
    file_stems,
    flagged_rate_chart,
    is_report_file,
    save_worst,
    write_summary,
)
from rsdetect.serve.scoring import WORST_PER_CAMERA, CameraState, Row, score_items
from rsdetect.serve.signals import StopSignals, interrupt_exit_code, uninterrupted
from rsdetect.serve.sources import Source, SourceError, read_ahead, redact
from rsdetect.threshold import resolve_threshold

DEFAULT_MODEL = "models:/rs-detector@champion"


# ---------------------------------------------------------------- options, results

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
    # Video frames' motion and rolling-shutter evidence (params.yaml's video.analysis); None: the model alone.
    analysis: VideoAnalysisParams | None = None
    # The decode limit (images.max_pixels) of the process that made the options: Dask workers read with it too.
    max_pixels: int = field(default_factory=limits.max_pixels)

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
class RunResult:
    """What a scan or watch wrote: the report folder, summary.json's content and the exit code."""

    out_dir: Path
    summary: dict[str, Any]
    exit_code: int


@dataclass(frozen=True)
class ScanResult(RunResult):
    """How a scan ended (exit_code: 0 ok, 3 some source failed, 130 Ctrl-C, 143 SIGTERM)."""

    interrupted: bool


def claim(out_dir: str | os.PathLike) -> OutputLock:
    """The report folder checked (a folder of earlier reports or nothing; writable) and locked against a
    second scan; done before the model loads, so a wrong --out fails in a moment, not after it."""
    return OutputLock(check_report_dir(out_dir, is_report_file)).acquire()


# ---------------------------------------------------------------- scanning

TiledItem = tuple[Decoded, tuple[np.ndarray, list[Box]] | None]  # a frame and, for a still, its to_tiles


def _score_batch(batch: list[TiledItem], state: CameraState, model: LoadedModel, emit: Callable[[Row], None],
                 tiles_per_call: int) -> None:
    """Score one camera's batch of frames (score_items) and emit one row per frame."""
    for row in score_items([(state, frame) for frame, _ in batch], model, tiles_per_call, [t for _, t in batch]):
        emit(row)


def scan_source(state: CameraState, model: LoadedModel, options: ScanOptions, emit: Callable[[Row], None]) -> None:
    """Score one source in batches; a SourceError is counted (frames read before it are still scored)."""
    source = state.source
    total = source.estimate_frames(options.every, options.fps, options.max_frames)
    # Decoded in a process of this camera's own (rsdetect.serve.decoder): a decoder crash ends this camera only.
    frames = decoded_frames(source, state.fail, ReadRequest(options.every, options.fps, options.max_frames,
                                                             analysis=options.analysis, worst=WORST_PER_CAMERA,
                                                             max_pixels=options.max_pixels),
                            on_note=state.note, on_readout=state.set_readout)
    # The reader thread decodes the next batch and cuts it into tiles while this one is scored (OpenCV's decode
    # and resize release the GIL): the model's threads then wait on nothing else (bench_scan.py).
    tiled = ((frame, to_tiles(frame[2], model.image_size) if frame[2] is not None and frame[3] is None else None)
             for frame in frames)
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
    hit_cap = max_frames is not None and state.stats.scored >= max_frames
    try:
        annotate_video(state.source.spec, state.scores, threshold, stage / rel,
                       state.scores[-1][0] if hit_cap else None, explain)
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
    threshold = resolve_threshold(options.threshold, model.threshold)
    states = {s.camera: CameraState(s, options.smooth, threshold, keep_scores=options.annotate and s.annotatable,
                                    explain=explain) for s in sources}
    stems = file_stems(states)
    with contextlib.ExitStack() as stack:
        if lock is None:
            stack.enter_context(OutputLock(out))
        elif not (lock.held and lock.out == out):
            raise ValueError(f"lock is not a held claim on {out}")
        signals = stack.enter_context(StopSignals("scan"))
        stage = stack.enter_context(staged_dir(out))  # exits first: the swap happens under deferred signals
        exit_code = 0
        annotated: dict[str, str] = {}

        def done(state: CameraState) -> None:
            name, rel = state.source.camera, f"annotated/{stems[state.source.camera]}.avi"
            states[name] = state  # a worker's state comes back as a copy
            if explain is not None and state.explain is not None and state.explain is not explain:
                # so does its Explainer: keep its counts
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
                         **state.summary(),
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
               "video_evidence": options.analysis is not None,
               "interrupted": interrupted, "exit_code": exit_code, "cameras": cameras,
               "totals": {"cameras": len(cameras), "failed_cameras": failed, "frames_scored": scored,
                          "flagged": flagged, "flagged_rate": flagged / scored if scored else None}}
    if explain is not None:
        summary["explain"] = explain.summary()
    write_summary(stage, summary)
    (stage / "flagged_rate.png").write_bytes(flagged_rate_chart(cameras, threshold, options.smooth))
    return summary
