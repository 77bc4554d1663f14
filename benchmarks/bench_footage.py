"""`rsdetect scan` and `watch` with video evidence on footage: frames/s beside the decode-only limit of the same files,
measured in the same run.

Each video is read three ways, interleaved over --repeat rounds (best of each kept: other jobs share these cores):
- decode: OpenCV decoding alone, in this process (the limit; sources.video_frames, what every reader runs), and
  the cores it kept busy (FFmpeg decodes in threads of its own);
- analysis: the video evidence alone, frames/s of the stream path each decoder process runs (video/stream.py) with
  its decoding not timed (one thread), scan's ceiling on that footage;
- scan: `run_scan` with the video evidence (each camera's decoder process decodes and measures motion; video frames
  are scored by their evidence, so the model runs on no video frame), reports included;
- watch: `run_watch` on the same file, likewise.
Scan and watch are timed whole (start-up and reports included: ~0.2 s, most of a static clip's 2000 frames) and in
the steady state a long file or a camera around the clock runs in: the frames a run of all of them reads beyond a
run of a quarter of them, over the time it takes beyond it (`steady`).
Goals (issue 21 item 7): >= 250 frames/s on 640x480 footage with movers on 2 cores, and >= 0.5 of decode-only on
real footage. Inputs: the videos given, else ../shared/data/footage/*.avi where present, plus two clips written
here (mp4v): 640x480, a textured street with three movers; 320x240, a static textured scene with sensor noise.
Run: python benchmarks/bench_footage.py [--model models/model.keras] [--frames 400] [--repeat 2] [VIDEO ...]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import load_params
from rsdetect.serve.loaders import load_model
from rsdetect.serve.scan import ScanOptions, run_scan
from rsdetect.serve.sources import parse_sources, video_frames
from rsdetect.serve.watch.loop import WatchOptions, run_watch
from rsdetect.serve.watch.metrics import WatchMetrics
from rsdetect.video.stream import analysed_frames

ROOT = Path(__file__).resolve().parents[1]
FOOTAGE = ROOT.parent / "shared" / "data" / "footage"
GOAL_FPS = 250.0
GOAL_RATIO = 0.5


def movers_clip(path: Path, n: int, w: int = 640, h: int = 480, fps: float = 25.0) -> Path:
    """A fixed camera over a textured scene with three boxes crossing it at 3, 6 and 10 px/frame."""
    rng = np.random.default_rng(0)
    fine = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)), (0, 0), 2)
    coarse = cv2.resize(rng.uniform(0, 255, (12, 16)), (w, h), interpolation=cv2.INTER_CUBIC)
    scene = cv2.cvtColor(np.clip(0.5 * fine + 0.5 * coarse, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {path}")
    for i in range(n):
        frame = scene.copy()
        for k, (speed, y) in enumerate(((3, 80), (6, 220), (10, 340))):
            x = int(speed * i) % (w + 60) - 60
            cv2.rectangle(frame, (x, y), (x + 50, y + 110), (40 + 70 * k, 200 - 60 * k, 90), -1)
        writer.write(frame)
    writer.release()
    return path


def static_clip(path: Path, n: int, w: int = 320, h: int = 240, fps: float = 25.0) -> Path:
    """A fixed camera over a textured scene where nothing moves, with sensor noise (sigma 1) in every frame: what
    motion gating is for (most of a surveillance camera's frames)."""
    rng = np.random.default_rng(1)
    scene = cv2.cvtColor(cv2.GaussianBlur(rng.uniform(0, 255, (h, w)), (0, 0), 2).astype(np.uint8),
                         cv2.COLOR_GRAY2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {path}")
    for _ in range(n):
        writer.write(np.clip(scene + rng.normal(0, 1, scene.shape), 0, 255).astype(np.uint8))
    writer.release()
    return path


def decode_fps(path: Path, max_frames: int) -> tuple[int, float, float]:
    """(frames, frames/s, cores busy): decoding is itself threaded (FFmpeg), so its rate can already use more than
    one of the cores the ratio's goal leaves for everything else."""
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for _ in video_frames(str(path), max_frames=max_frames):
        n += 1
    wall = time.perf_counter() - start
    return n, n / wall, (time.process_time() - cpu) / wall


def analysis_fps(path: Path, analysis, max_frames: int) -> float:
    """Frames/s of the video evidence alone: video/stream.analysed_frames, what each camera's decoder process runs on
    its frames (frame rate from their time stamps, rows lag_frames behind), less the time spent decoding them. The
    ceiling of scan's rate on that footage, whatever the decoding costs."""
    decoding = 0.0

    def decoded():
        nonlocal decoding
        frames = iter(video_frames(str(path), max_frames=max_frames))
        while True:
            start = time.perf_counter()
            frame = next(frames, None)
            decoding += time.perf_counter() - start
            if frame is None:
                return
            yield frame

    start = time.perf_counter()
    n = sum(1 for _ in analysed_frames(decoded(), analysis, None, None, lambda _: None))
    return n / (time.perf_counter() - start - decoding)


def scan_fps(path: Path, model, analysis, max_frames: int, out: Path) -> tuple[int, float]:
    start = time.perf_counter()
    result = run_scan(parse_sources([str(path)]), model, out, ScanOptions(progress=False, analysis=analysis,
                                                                          max_frames=max_frames))
    n = result.summary["totals"]["frames_scored"]
    return n, time.perf_counter() - start


def watch_fps(path: Path, model, analysis, max_frames: int, out: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115  (watch says each camera's end)
        result = run_watch(parse_sources([str(path)]), model, out,
                           WatchOptions(analysis=analysis, max_frames=max_frames, queue_frames=64, summary_interval=60),
                           WatchMetrics())
    n = result.summary["totals"]["frames_scored"]
    return n, time.perf_counter() - start


def rates(run, max_frames: int, out: Path) -> tuple[float, float]:
    """(frames/s of a whole run, steady frames/s): `run(max_frames, out)` -> (frames, seconds), run on all the
    frames and on a quarter of them; steady is the frames beyond the quarter over the seconds beyond it."""
    n, t = run(max_frames, out / "all")
    q, tq = run(max(1, n // 4), out / "quarter")  # a quarter of what it read (a file may be shorter than max_frames)
    return n / t, ((n - q) / (t - tq) if n > q and t > tq else float("nan"))


def ratio(fps: float, decode: float) -> str:
    """A steady rate over decode-only, or '-' where none was measured (the quarter run took as long as the whole)."""
    return f"{fps / decode:6.2f}" if fps > 0 else f"{'-':>6s}"


def footage_args(doc: str, frames: int) -> argparse.ArgumentParser:
    """The arguments of the benchmarks run on footage: videos, model, params, frames and rounds."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("videos", nargs="*", type=Path, help="default: ../shared/data/footage/*.avi where present")
    ap.add_argument("--model", default=str(ROOT / "models" / "model.keras"))
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--frames", type=int, default=frames, help=f"frames per video and way (default {frames})")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the best of each is kept (default 2)")
    return ap


def footage(videos: list[Path]) -> list[Path]:
    """The videos given, else the real footage in ../shared where present."""
    return list(videos) or (sorted(FOOTAGE.glob("*.avi")) if FOOTAGE.is_dir() else [])


def main() -> None:
    args = footage_args(__doc__, 400).parse_args()
    analysis = load_params(args.params).video.analysis
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        videos = footage(args.videos)
        videos.append(movers_clip(Path(tmp) / "movers_640x480.mp4", args.frames))
        videos.append(static_clip(Path(tmp) / "static_320x240.mp4", args.frames))
        # The decoder processes' forkserver starts with the first scan (~1 s of imports): started here, untimed, so
        # that it is not counted in the first video's first round (nor in that round's steady rate)
        scan_fps(videos[-1], model, analysis, 2, Path(tmp) / "warm-up")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"bench_footage: {len(os.sched_getaffinity(0))} cores, load {load:.2f}, best of {args.repeat}")
        print(f"{'video':34s} {'size':>9s} {'frames':>6s} {'decode f/s':>10s} {'cores':>5s} {'analysis':>8s} "
              f"{'scan f/s':>9s} {'ratio':>6s} {'steady':>6s} {'watch f/s':>9s} {'ratio':>6s} {'steady':>6s}")
        for video in videos:
            best = {k: 0.0 for k in ("decode", "analysis", "scan", "scan_steady", "watch", "watch_steady")}
            frames, cores = 0, 0.0
            for r in range(args.repeat):
                frames, fps, busy = decode_fps(video, args.frames)
                if fps > best["decode"]:
                    best["decode"], cores = fps, busy  # the cores decoding kept busy in its best round
                best["analysis"] = max(best["analysis"], analysis_fps(video, analysis, args.frames))
                for way, run in (("scan", scan_fps), ("watch", watch_fps)):
                    whole, steady = rates(functools.partial(run, video, model, analysis), args.frames,
                                          Path(tmp) / f"{way}{r}")
                    best[way] = max(best[way], whole)
                    best[f"{way}_steady"] = max(best[f"{way}_steady"], steady)
            cap = cv2.VideoCapture(str(video))
            size = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
            cap.release()
            d = best["decode"]
            print(f"{video.name[:34]:34s} {size:>9s} {frames:6d} {d:10.0f} {cores:5.2f} {best['analysis']:8.0f} "
                  f"{best['scan']:9.0f} {best['scan'] / d:6.2f} {ratio(best['scan_steady'], d)} "
                  f"{best['watch']:9.0f} {best['watch'] / d:6.2f} {ratio(best['watch_steady'], d)}")
        print(f"goals: >= {GOAL_FPS:.0f} frames/s on 640x480 with movers; "
              f">= {GOAL_RATIO} of decode-only on real footage")


if __name__ == "__main__":
    main()
