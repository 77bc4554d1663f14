"""Frames/s of `rsdetect scan` over several 640x480 video cameras: one process (the default) against cameras
sharded over a local Dask cluster of 1 and 2 worker processes (rsdetect.serve.shard), with the model exported to
TFLite; plus a paper estimate of the machines 1,000 cameras at 5 sampled frames/s would need.

Every run writes the full report set. Cluster start-up and each worker's model load are timed apart (paid once
per scan, not per frame).
Run: python benchmarks/bench_shard.py [--model models/model.keras] [--cameras 4] [--frames 300]
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_CAMERAS, TARGET_FPS = 1000, 5.0


def write_camera(path: Path, n: int, seed: int) -> Path:
    """An MJPG .avi of n 640x480 frames: a textured background and a bar sweeping across it."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    for i in range(n):
        img = base.copy()
        x = (i * 11) % 600
        cv2.rectangle(img, (x, 60), (x + 40, 420), (40, 40, 200), -1)
        writer.write(img)
    writer.release()
    return path


def _fix_threads(threads: int | None) -> None:
    import rsdetect.serve.shard

    rsdetect.serve.shard.host_threads = lambda: threads  # None: TFLite on every core, as a lone process has it


def timed_scan(specs: list[str], model_spec: str, out: Path, workers: int,
               threads: int | None | str = "auto") -> tuple[float, float, int]:
    """(cluster start s, scan s, frames scored): workers 0 is the single process; threads: each worker's TFLite
    threads ("auto": rsdetect.serve.shard.host_threads, cores / workers)."""
    from rsdetect.serve.loaders import load_model
    from rsdetect.serve.scan import ScanOptions, run_scan
    from rsdetect.serve.shard import describe_model, open_client, sharded_cameras
    from rsdetect.serve.sources import parse_sources

    options = ScanOptions(batch=16, progress=False)
    if workers == 0:
        t = time.perf_counter()
        r = run_scan(parse_sources(specs), load_model(model_spec), out, options)
        return 0.0, time.perf_counter() - t, r.summary["totals"]["frames_scored"]
    t0 = time.perf_counter()
    with open_client(workers) as client:
        if threads != "auto":
            client.run(_fix_threads, threads)
        model = describe_model(client, model_spec)  # loads it on every worker: paid with the start, once per worker
        t = time.perf_counter()
        r = run_scan(parse_sources(specs), model, out, options,
                     cameras=sharded_cameras(client, model_spec, options))
        return t - t0, time.perf_counter() - t, r.summary["totals"]["frames_scored"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "model.keras"))
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--frames", type=int, default=300, help="frames per camera video (all scored)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds over all modes; each mode keeps its fastest scan")
    args = ap.parse_args()
    from rsdetect.serve.export import export_model

    logging.getLogger("distributed").setLevel(logging.ERROR)  # TF's import leaves the root logger at INFO

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        exported = export_model(args.model, "tflite", tmp / "model.tflite")
        print(f"model: {args.model} -> TFLite {exported['image_size']}px in {time.perf_counter() - t:.0f} s; "
              f"{os.cpu_count()} CPU cores (shared with other work: timings are noisy)")
        specs = [str(write_camera(tmp / f"cam{i}.avi", args.frames, i)) for i in range(args.cameras)]
        runs: dict[str, tuple[float, float, int, float]] = {}
        # "1 worker" runs TFLite on one thread: the per-core rate; the last mode runs both workers' TFLite on all
        # cores (4 threads on 2 cores), what host_threads avoids.
        modes = {"1 process": (0, "auto"), "dask, 1 worker": (1, 1), "dask, 2 workers": (2, "auto"),
                 "2, all threads": (2, None)}
        for _ in range(args.repeat):  # round-robin, so load from other work hits every mode alike
            for label, (workers, threads) in modes.items():
                cpu = time.process_time()
                start, secs, frames = timed_scan(specs, exported["path"], tmp / f"out{label}", workers, threads)
                if label not in runs or secs < runs[label][1]:
                    runs[label] = (start, secs, frames, time.process_time() - cpu)
    base_fps = runs["1 process"][2] / runs["1 process"][1]
    print(f"\n{args.cameras} cameras x {args.frames} frames of 640x480 video, batch 16; fastest of {args.repeat}")
    print(f"{'mode':<16} {'cluster start':>13} {'scan s':>7} {'frames/s':>9} {'vs 1 process':>12}")
    for label, (start, secs, frames, _) in runs.items():
        fps = frames / secs
        print(f"{label:<16} {start:12.1f}s {secs:7.1f} {fps:9.1f} {fps / base_fps:11.2f}x")
    one = runs["1 process"]
    print(f"\nper-frame cost, 1 process: {1000 * one[1] / one[2]:.1f} ms wall on {os.cpu_count()} cores, "
          f"{1000 * one[3] / one[2]:.1f} ms of CPU (decode, tiles, TFLite, reports)")
    fps1, fps2 = (runs[k][2] / runs[k][1] for k in ("dask, 1 worker", "dask, 2 workers"))
    need = TARGET_CAMERAS * TARGET_FPS
    best = max(r[2] / r[1] for r in runs.values())
    efficiency = fps2 / (2 * fps1)  # 2 workers on 2 cores against twice one worker on one core
    per16 = 16 * fps1 * efficiency
    print(f"{TARGET_CAMERAS} cameras at {TARGET_FPS:g} sampled frames/s = {need:.0f} frames/s:")
    print(f"  2-core machines like this one ({best:.1f} frames/s each, best mode): {int(np.ceil(need / best))}")
    print(f"  16-core machines, 16 workers: 16 x {fps1:.1f} frames/s per core x measured efficiency {efficiency:.2f} "
          f"(2 workers vs 2 x 1 worker, scaling assumed linear beyond) = {per16:.0f} frames/s each: "
          f"{int(np.ceil(need / per16))}")


if __name__ == "__main__":
    main()
