"""Throughput of the video path (rsdetect.video): decode-only vs decode + analysis, frames/s and their ratio.
The analysis runs as `rsdetect check-footage` runs it (rsdetect.evaluation.footage: a decoder process per video).

On a 640x480 fixed-camera clip rendered here (textured background, one textured box walking across, sensor
noise; written as MJPG to a temp dir so decoding is real) and on the real footage in ../shared/data/footage/
where present. Both numbers of a row are measured in the same run, one after the other.
Run: python benchmarks/bench_video.py [--frames 300] [--work-width W] [--preset P]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import load_params, updated
from rsdetect.evaluation.footage import check_video
from rsdetect.serve.sources import resolve_source, video_frames

ROOT = Path(__file__).resolve().parents[1]
FOOTAGE = ROOT.parent / "shared" / "data" / "footage"


def rendered_clip(path: Path, frames: int, fps: float = 25.0, seed: int = 0) -> Path:
    """A 640x480 MJPG clip: a still textured scene and a 60x200 px box walking 6 px/frame across it."""
    rng = np.random.default_rng(seed)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (480, 640, 3)), (0, 0), 2).astype(np.uint8)
    box = cv2.GaussianBlur(rng.uniform(0, 255, (200, 60, 3)), (0, 0), 1).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    for k in range(frames):
        frame = scene.copy()
        x = int(6 * k) % (640 - 60)
        frame[200:400, x:x + 60] = box
        writer.write(np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8))
    writer.release()
    return path


def decode_rate(path: Path, frames: int) -> float:
    start = time.perf_counter()
    n = sum(1 for _ in video_frames(str(path), max_frames=frames, on_note=lambda _: None))
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--work-width", type=int)
    ap.add_argument("--preset")
    args = ap.parse_args()
    p = load_params(ROOT / "params.yaml").video.analysis
    changes = {k: v for k, v in (("work_width", args.work_width), ("flow_preset", args.preset)) if v is not None}
    p = updated(p, **changes)
    print(f"work_width {p.work_width}, flow preset {p.flow_preset}, {cv2.getNumThreads()} OpenCV threads")
    with tempfile.TemporaryDirectory() as tmp:
        videos = [rendered_clip(Path(tmp) / "walker_640x480.avi", args.frames)]
        videos += sorted(FOOTAGE.glob("*.avi")) if FOOTAGE.is_dir() else []
        for path in videos:
            decode = decode_rate(path, args.frames)
            summary = check_video(resolve_source(path.stem, str(path)), p, max_frames=args.frames)
            print(f"{path.name}: {summary['frames']} frames, decode-only {decode:.0f} frames/s, analysed "
                  f"{summary['frames_per_s']:.0f} frames/s (ratio {summary['frames_per_s'] / decode:.2f}), "
                  f"flagged {summary['flag_rate']:.3f}, static {summary['static_rate']:.3f}, "
                  f"readout {summary['readout']['source']}")


if __name__ == "__main__":
    main()
