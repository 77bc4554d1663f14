"""Throughput of the video path (rsdetect.video): decode-only vs decode + analysis, frames/s and their ratio.
The analysis runs as `rsdetect check-footage` runs it (rsdetect.evaluation.footage: a decoder process per video).

On a 640x480 fixed-camera clip rendered here (textured background, one textured box walking across, sensor
noise; written as MJPG to a temp dir so decoding is real) and on the real footage in ../shared/data/footage/
where present. Both numbers of a row are measured in the same run, one after the other. Last, a shaking camera
(every frame through the precise flow pass) analysed with the params' flow_preset and with fast, same run.
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
from rsdetect.synth.clips import crop_box, render_camera, vibration

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


def shaking_clip(path: Path, frames: int, fps: float = 25.0, seed: int = 0) -> Path:
    """A 640x480 MJPG clip of a camera shaking (3 px at 7 Hz, 24 ms readout) over a textured scene: every frame
    goes through the precise flow pass (video.analysis.flow_preset), which a fixed camera's frames never reach."""
    rng = np.random.default_rng(seed)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (686, 915, 3)), (0, 0), 2).astype(np.uint8)
    rendered, _ = render_camera(scene, vibration(3.0, 7.0, fps, 0.0, 0.5), frames, 24.0 * fps / 1000.0, "rolling",
                                crop_box(scene, 0.7))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    for frame in rendered:
        writer.write(frame)
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
        # the precise pass's cost where the camera moves: this run's preset against fast, measured one after the other
        shaking = shaking_clip(Path(tmp) / "shaking_640x480.avi", args.frames)
        rates = {preset: check_video(resolve_source(shaking.stem, str(shaking)), updated(p, flow_preset=preset),
                                     max_frames=args.frames)["frames_per_s"] for preset in (p.flow_preset, "fast")}
        print(f"{shaking.name} (camera moving every frame): analysed {rates[p.flow_preset]:.0f} frames/s with "
              f"{p.flow_preset}, {rates['fast']:.0f} with fast (ratio {rates[p.flow_preset] / rates['fast']:.2f})")


if __name__ == "__main__":
    main()
