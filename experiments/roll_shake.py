"""Does a camera turning about its optical axis (roll) read as a rolling shutter? A development experiment (issue 21).

A mount that shakes turns as well as shifts. A roll of w between two frames moves the background by dx = -w (y - cy),
dy = w (x - cx): a row dependence under any shutter, which the readout fit (rsdetect.video.readout) would take for a
readout. The `video` stage's vibration clips have no roll, so it never showed there.

Each clip here: a test-split photo of the `video` stage (real or drawn), cropped to its middle 70%, shaken
(translation 1-4 px at 4-12 Hz, as the stage) and rolled (1-4 px at the crop's edges, 4-12 Hz, its own phase),
40 frames at 25 fps, sensor noise sigma 2 and a JPEG round trip (as rsdetect.synth.clips.degrade); rendered with
a rolling shutter (readout 6-33 ms, each row at its own time) and as its global-shutter twin. The video path
(rsdetect.video.analyze.analyze, readout not told) measures each; reported: the readout estimate and the share of
frames flagged.

Measured 2026-12-06 (--clips 8, each source; ~20 s a run): global-shutter twins with a readout unknown or <= 2 ms,
their mean share of frames flagged, rolling-shutter readouts within 25%:
                                        real photos          drawn scenes
  bands as measured (no correction)     0/8  0.75  3/8       1/8  0.65  4/8
  roll and zoom taken out in full       8/8  0.00  8/8       4/8  0.14  7/8
  ... under 0.1 work px left (kept)     6/8  0.01  7/8       3/8  0.17  7/8
  ... and bands weighed by texture      7/8  0.00  8/8       5/8  0.12  6/8
Again 2026-12-07, before -> after the roll was measured with its side columns kept (refit) and taken out whole
for a camera found to roll (video.analysis.roll_camera_work_px):
  as it is now                          7/8 -> 8/8  0.00  6/8 -> 7/8    5/8 -> 8/8  0.13 -> 0.00  5/8 -> 6/8
(rsdetect.video.motion.column_slopes; params.yaml's video.analysis.roll_dead_work_px says why the dead zone;
rsdetect.video.readout.band_weights for the last row.)
Drawn scenes (flat colours) had seemed to give flow too little texture to measure a roll well; what was short was
the roll's measure (its side columns left out as movers): their twins are right since.
Run: PYTHONPATH=src python experiments/roll_shake.py [--raw data/raw] [--source real|drawn] [--clips 8] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rsdetect.config import load_params  # noqa: E402
from rsdetect.synth.clips import crop_box, degrade, render_rolled, turning, vibration  # noqa: E402
from rsdetect.video.analyze import analyze  # noqa: E402
from video import test_photos  # noqa: E402  (src/video.py: the stage's test split)

FPS = 25.0
FRAMES = 40


def render(image: np.ndarray, shift, roll_rad, r: float, shutter: str, rng: np.random.Generator) -> list[np.ndarray]:
    """RGB frames of the crop's middle 70% shifted by shift(t) and turned by roll_rad(t) about its centre
    (render_rolled), with sensor noise and a JPEG round trip."""
    frames = render_rolled(image, shift, roll_rad, FRAMES, r, shutter, crop_box(image, 0.7))
    return [cv2.cvtColor(degrade(frame, rng, 2.0, 90), cv2.COLOR_BGR2RGB) for frame in frames]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=ROOT / "data" / "raw")
    ap.add_argument("--source", choices=["real", "drawn"], default="real")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    photos = test_photos(args.raw, params)[args.source][:args.clips]
    twins_zero, flagged, within = 0, [], 0
    for i, (path, _) in enumerate(photos):
        image = cv2.imread(str(path))
        if image is None:
            sys.exit(f"roll_shake: {path}: not a readable image")
        rng = np.random.default_rng([args.seed, i])
        shift = vibration(rng.uniform(1, 4), rng.uniform(4, 12), FPS, rng.uniform(0, 2 * np.pi),
                          rng.uniform(0, 2 * np.pi))
        half_width = crop_box(image, 0.7)[2] / 2
        amplitude, hz, phase = rng.uniform(1, 4) / half_width, rng.uniform(4, 12), rng.uniform(0, 2 * np.pi)
        roll = turning(amplitude, hz, FPS, phase)

        r = rng.uniform(6, 33) * FPS / 1000.0
        for shutter in ("global", "rolling"):
            rows, readout = analyze(render(image, shift, roll, r if shutter == "rolling" else 0.0, shutter, rng),
                                    FPS, params.video.analysis)
            share = float(np.mean([row["flag"] for row in rows]))
            truth = r * 1000.0 / FPS if shutter == "rolling" else 0.0
            if shutter == "global":
                twins_zero += readout["ms"] is None or readout["ms"] <= params.video.analysis.zero_readout_ms
                flagged.append(share)
            else:
                within += readout["ms"] is not None and abs(readout["ms"] - truth) <= 0.25 * truth
            print(f"{path.name:18s} {shutter:7s} readout {truth:5.1f} ms  estimated {readout['ms']} "
                  f"({readout['source']}, ci {readout['ci_ms']})  flagged {share:.2f}  "
                  f"roll {np.degrees(amplitude):.2f} deg")
    print(f"global-shutter twins: readout unknown or <= 2 ms {twins_zero}/{len(photos)}, flagged mean "
          f"{np.mean(flagged):.2f}; rolling shutter: readout within 25% {within}/{len(photos)}")


if __name__ == "__main__":
    main()
