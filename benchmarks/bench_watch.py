"""`rsdetect watch` end to end: total frames/s with 1, 4 and 16 cameras, each reading a 640x480 video (MJPG
.avi), scored by the TFLite export of the trained model (made here by rsdetect.serve.export), against two limits
measured in the same run on the same input: decode only (the same number of reader threads decoding the same
frames, nothing scored) and score only (the model on already-decoded frames, batch as watch's).

Files, not live streams: a file's reader waits for the scorer instead of dropping frames, so the rate is the
pipeline's capacity. The watch's time includes its start (first summary, readers, model warm-up) and end
(reader join, final reports): "steady" leaves them out, (N*F - N) / (t(F frames) - t(1 frame)), both
timed in the same run.
Run: python benchmarks/bench_watch.py [--model models/model.keras] [--frames 24] [--cameras 1 4 16]

--shard: instead, `watch --workers` (rsdetect.serve.watch.shard): steady frames/s of the same cameras watched by this
process, then by a local Dask cluster of 1 and of 2 single-threaded workers (cluster started and model loaded
before timing, one warm-up watch each), interleaved --repeats times, the best of each with its ratio to the
single process's best, measured in the same run.
Run: python benchmarks/bench_watch.py --shard [--cameras 4] [--frames 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_video(path: Path, n: int, w: int = 640, h: int = 480) -> Path:
    """A 640x480 MJPG video of moving shapes over noise (decodes like camera footage, not like a flat colour)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), np.uint8)
    base = cv2.GaussianBlur(base, (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h))
    for i in range(n):
        img = base.copy()
        cv2.rectangle(img, (20 + 7 * i % (w - 120), 100), (120 + 7 * i % (w - 120), 300), (30, 200, 80), -1)
        cv2.circle(img, (w - 60 - 5 * i % (w - 120), 380), 40, (200, 60, 30), -1)
        writer.write(img)
    writer.release()
    return path


def decode_only(video: Path, cameras: int, frames: int) -> float:
    """Frames/s of `cameras` threads each decoding `frames` frames of the video to RGB, as watch's readers do."""
    def read() -> None:
        cap = cv2.VideoCapture(str(video))
        for _ in range(frames):
            ok, bgr = cap.read()
            assert ok
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        cap.release()
    threads = [threading.Thread(target=read) for _ in range(cameras)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return cameras * frames / (time.perf_counter() - start)


def score_only(model, video: Path, frames: int, batch: int) -> float:
    """Frames/s of preprocess.score_frames alone (tiling, resizing and the model) on decoded frames."""
    from rsdetect.preprocess import score_frames

    cap = cv2.VideoCapture(str(video))
    rgb = [cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB) for _ in range(min(frames, batch))]
    cap.release()
    score_frames(model.scorer, rgb, model.image_size, batch)  # warm-up
    n, start = 0, time.perf_counter()
    while n < frames:
        score_frames(model.scorer, rgb, model.image_size, batch)
        n += len(rgb)
    return n / (time.perf_counter() - start)


def watch_rate(model, video: Path, cameras: int, frames: int, batch: int, out: Path, run=None) -> tuple[float, dict]:
    """Frames/s of run_watch (or `run`, with its arguments) over `cameras` copies of the video (each camera
    reads `frames` frames)."""
    from rsdetect.serve.sources import parse_sources
    from rsdetect.serve.watch.loop import WatchOptions, run_watch
    from rsdetect.serve.watch.metrics import WatchMetrics

    sources = parse_sources([f"cam{i}={video}" for i in range(cameras)])
    start = time.perf_counter()
    result = (run or run_watch)(sources, model, out, WatchOptions(batch=batch, max_frames=frames, summary_interval=1e6),
                                WatchMetrics())
    took = time.perf_counter() - start
    return result.summary["totals"]["frames_scored"] / took, result.summary["totals"]


def steady_rate(model, video: Path, cameras: int, frames: int, batch: int, out: Path, run=None) -> tuple[float, float]:
    """(whole-run frames/s, steady frames/s: start and stop left out by timing a 1-frame watch beside it)."""
    start = time.perf_counter()
    watch_rate(model, video, cameras, 1, batch, out / "one", run)
    fixed = time.perf_counter() - start
    rate, totals = watch_rate(model, video, cameras, frames, batch, out / "all", run)
    assert totals["frames_scored"] == cameras * frames and totals["frames_dropped"] == 0, totals
    return rate, cameras * (frames - 1) / (cameras * frames / rate - fixed)


def shard_rows(model, spec: str, video: Path, cameras: int, frames: int, batch: int, tmp: Path, repeats: int) -> None:
    """watch in this process, on a local Dask cluster of 1 and of 2 workers, interleaved `repeats` times (load on
    a shared machine drifts); the best of each, and its ratio to this process's best."""
    from rsdetect.serve.shard import describe_model, open_client
    from rsdetect.serve.watch.shard import run_sharded_watch

    logging.getLogger("distributed").setLevel(logging.ERROR)  # the TensorFlow export left the root logger at INFO

    def sharded(client):
        described = describe_model(client, spec)  # every worker loads the model before the clock starts

        def run(sources, model, out, options, metrics):
            return run_sharded_watch(client, spec, sources, described, out, options, metrics)
        return run

    with open_client(1) as one, open_client(2) as two:
        modes = {"this process": None, "Dask 1 worker": sharded(one), "Dask 2 workers": sharded(two)}
        for name, run in modes.items():  # warm-up: a worker imports the watch modules with its first task
            watch_rate(model, video, cameras, 1, batch, tmp / f"warm-{name}", run)
        best: dict[str, tuple[float, float]] = {}
        for rep in range(repeats):
            for name, run in modes.items():
                got = steady_rate(model, video, cameras, frames, batch, tmp / f"{name}-{rep}", run)
                best[name] = max(best.get(name, got), got, key=lambda r: r[1])
    print(f"{'mode':>16} {'watch f/s':>10} {'steady f/s':>11} {'steady ratio':>13}   (best of {repeats})")
    for name, (rate, steady) in best.items():
        print(f"{name:>16} {rate:>10.1f} {steady:>11.1f} {steady / best['this process'][1]:>13.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "model.keras"))
    parser.add_argument("--frames", type=int, default=64, help="frames per camera")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--shard", action="store_true", help="this process against Dask 1 and 2 workers")
    parser.add_argument("--repeats", type=int, default=3, help="--shard: interleaved repeats, best kept")
    args = parser.parse_args()

    from rsdetect.serve.export import export_model
    from rsdetect.serve.loaders import load_model
    from rsdetect.serve.reports import flagged_rate_chart

    # import matplotlib once, before any timing
    flagged_rate_chart({"a": {"flagged_rate": 0.0, "flagged": 0, "frames_scored": 0, "failures": 0}}, 0.5, 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        r = export_model(args.model, "tflite", tmp / "model.tflite")
        model = load_model(str(tmp / "model.tflite"))
        video = make_video(tmp / "cam.avi", args.frames)
        print(f"model {args.model} -> TFLite ({r['bytes'] / 1e6:.1f} MB, {model.image_size} px; 640x480 frames "
              f"are {2} tiles); {os.cpu_count()} CPUs; {args.frames} frames per camera, batch {args.batch}")
        if args.shard:
            for n in args.cameras:
                print(f"{n} cameras:")
                shard_rows(model, str(tmp / "model.tflite"), video, n, args.frames, args.batch, tmp / f"shard{n}",
                           args.repeats)
            return
        print(f"{'cameras':>7} {'watch f/s':>10} {'steady f/s':>11} {'decode f/s':>11} {'steady/decode':>14} "
              f"{'score-only f/s':>15} {'steady/score-only':>18}")
        for n in args.cameras:
            decode = decode_only(video, n, args.frames)
            # beside each row: load drifts
            limit = score_only(model, video, max(args.frames, 4 * args.batch), args.batch)
            start = time.perf_counter()
            watch_rate(model, video, n, 1, args.batch, tmp / f"one{n}")
            fixed = time.perf_counter() - start
            rate, totals = watch_rate(model, video, n, args.frames, args.batch, tmp / f"out{n}")
            assert totals["frames_scored"] == n * args.frames and totals["frames_dropped"] == 0, totals
            steady = n * (args.frames - 1) / (n * args.frames / rate - fixed)
            print(f"{n:>7} {rate:>10.1f} {steady:>11.1f} {decode:>11.1f} {steady / decode:>14.3f} {limit:>15.1f} "
                  f"{steady / limit:>18.3f}"
                  f"   (start+stop {fixed:.2f} s)")


if __name__ == "__main__":
    main()
