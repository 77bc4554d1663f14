"""What `watch --keep-flagged N` costs: a watch told each camera's readout (so that frames are flagged by their
measured shear), frames/s without saving flagged frames and with, interleaved over --repeat rounds in the same run
(best of each kept: other jobs share these cores), and the ratio.

Saving a flagged frame costs its pixels crossing from the camera's decoder process (shared memory) and a PNG
(fastest compression) written by the scoring thread; a frame that is not flagged costs nothing more.
Inputs: the videos given (each told --readout-ms), else ../shared/data/footage/*.avi where present, plus a 640x480
clip with three movers written here.
Run: python benchmarks/bench_keep_flagged.py [--frames 600] [--repeat 2] [--readout-ms 16] [--keep 100] [VIDEO ...]
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from bench_footage import footage, footage_args, movers_clip

from rsdetect.config import load_params
from rsdetect.serve.loaders import load_model
from rsdetect.serve.sources import Sensor, parse_sources
from rsdetect.serve.watch.loop import WatchOptions, run_watch
from rsdetect.serve.watch.metrics import WatchMetrics


def watch(path: Path, model, analysis, readout_ms: float, frames: int, keep: int, out: Path
          ) -> tuple[float, int, int]:
    """(frames/s, frames flagged, frames saved) of a watch of `path` told `readout_ms`, saving `keep` (0: none)."""
    source = parse_sources([str(path)], sensor=Sensor(readout_ms=readout_ms))
    start = time.perf_counter()
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115  (watch says each camera's end)
        result = run_watch(source, model, out, WatchOptions(analysis=analysis, max_frames=frames, queue_frames=64,
                                                            summary_interval=60, keep_flagged=keep), WatchMetrics())
    seconds = time.perf_counter() - start
    camera = next(iter(result.summary["cameras"].values()))
    saved = (camera["flagged_frames"] or {}).get("saved", 0)
    return camera["frames_scored"] / seconds, camera["flagged"], saved


def main() -> None:
    ap = footage_args(__doc__, 600)
    ap.add_argument("--readout-ms", type=float, default=16.0, help="the readout every camera is told (default 16)")
    ap.add_argument("--keep", type=int, default=100, help="--keep-flagged N of the saving runs (default 100)")
    args = ap.parse_args()
    analysis = load_params(args.params).video.analysis
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        videos = footage(args.videos)
        videos.append(movers_clip(Path(tmp) / "movers_640x480.mp4", args.frames))
        watch(videos[-1], model, analysis, args.readout_ms, 2, 0, Path(tmp) / "warm-up")  # the forkserver's start
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"bench_keep_flagged: {len(os.sched_getaffinity(0))} cores, load {load:.2f}, best of {args.repeat}, "
              f"told {args.readout_ms:g} ms, --keep-flagged {args.keep}")
        print(f"{'video':34s} {'flagged':>7s} {'saved':>5s} {'without f/s':>11s} {'with f/s':>8s} {'ratio':>6s}")
        for video in videos:
            best = {0: 0.0, args.keep: 0.0}
            flagged = saved = 0
            for r in range(args.repeat):
                for keep in best:
                    fps, flagged, n = watch(video, model, analysis, args.readout_ms, args.frames, keep,
                                            Path(tmp) / f"w{r}_{keep}")
                    best[keep] = max(best[keep], fps)
                    saved = max(saved, n)
            print(f"{video.name[:34]:34s} {flagged:7d} {saved:5d} {best[0]:11.0f} {best[args.keep]:8.0f} "
                  f"{best[args.keep] / best[0]:6.2f}")


if __name__ == "__main__":
    main()
