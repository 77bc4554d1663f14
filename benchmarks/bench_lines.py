"""The physics baseline (LR on straight-line tilt features) on real photos: ROC AUC with a photo-wise split, and speed.

Each photo gives --pairs random square crops (a third to all of its short side), resized to 160 px plus a margin.
Each crop becomes a rolling-shutter image (a camera pan, speed and readout drawn like synthesize.pan_speed and
synthesize.readout, sideways either way) and its global-shutter twin (the same pan seen at one instant t*), both
warped by rsdetect.shutter, cropped to 160 px and sent through a JPEG round trip, as the synthesize stage does.
LR on line_features is scored out of fold with folds grouped by photo (no photo on both sides of a split), also
per shear size. Speed: line_features per 160 px image, OpenCV on one thread, best of --repeats passes.

Usage: python benchmarks/bench_lines.py [--images DIR] [--pairs 4] [--kind pan|vibration] [--folds 5] [--repeats 3]
Photos: ../shared/data/coco-scenes-sample/images by default (read only; nothing is written beside them).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from rsdetect.config import load_params
from rsdetect.evaluation.baseline_models import fit_predict, logistic_regression
from rsdetect.evaluation.lines import line_features
from rsdetect.shutter import Motion, displacement, global_rows, shear_extent, warp_rows

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = ROOT.parent / "shared/data/coco-scenes-sample/images"


def pair(photo: np.ndarray, rng: np.random.Generator, size: int, kind: str,
         synth) -> tuple[np.ndarray, np.ndarray, float]:
    """RS image, its GS twin (both size x size grayscale, JPEG round trip) and the effective shear in px."""
    readout = float(rng.uniform(*synth.readout))
    if kind == "pan":  # as data.draw_motion: cameras pan mostly sideways
        motion = Motion("pan", speed=float(rng.uniform(*synth.pan_speed)),
                        direction=float(rng.choice([0.0, np.pi]) + rng.normal(0, 0.2)))
    else:
        motion = Motion("vibration", amplitude=float(rng.uniform(*synth.vibration_amplitude)),
                        cycles=float(rng.uniform(*synth.vibration_cycles)), direction=float(rng.uniform(0, 2 * np.pi)),
                        phase=float(rng.uniform(0, 2 * np.pi)))
    margin = int(np.ceil(max(synth.pan_speed[1], synth.vibration_amplitude[1]))) + 2
    side = size + 2 * margin
    h, w = photo.shape[:2]
    m = int(min(h, w) * rng.uniform(1 / 3, 1))
    y0, x0 = int(rng.integers(0, h - m + 1)), int(rng.integers(0, w - m + 1))
    window = cv2.resize(photo[y0:y0 + m, x0:x0 + m], (side, side), interpolation=cv2.INTER_AREA)
    t_rows = readout * (np.arange(side) - margin) / (size - 1)  # rows timed on the output frame, as data.make_pair
    rs_dx, rs_dy = displacement(motion, t_rows)
    gs_dx, gs_dy = global_rows(motion, side, float(rng.uniform(0, readout)))
    out = []
    for dx, dy in ((rs_dx, rs_dy), (gs_dx, gs_dy)):
        img = warp_rows(window, dx, dy, box=(margin, margin, size, size))  # only the output crop is computed
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, synth.jpeg_quality])
        out.append(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
    return out[0], out[1], shear_extent(rs_dx[margin:margin + size], rs_dy[margin:margin + size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, default=SHARED_IMAGES)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--kind", choices=("pan", "vibration"), default="pan")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=160)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    params = load_params(ROOT / "params.yaml")
    lp, synth = params.baselines.lines, params.synthesize
    files = sorted(args.images.glob("*.jpg"))
    if not files:
        raise SystemExit(f"{args.images}: no .jpg photos")
    images, labels, groups, shears = [], [], [], []
    for g, f in enumerate(files):
        photo = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        if photo is None or min(photo.shape) < args.size // 2:
            continue
        rng = np.random.default_rng([params.seed, g])
        for _ in range(args.pairs):
            rs, gs, shear = pair(photo, rng, args.size, args.kind, synth)
            images += [rs, gs]
            labels += [1, 0]
            groups += [g, g]
            shears += [shear, 0.0]
    y, groups, shears = np.array(labels), np.array(groups), np.array(shears)

    best = np.inf
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        x = np.stack([line_features(im, lp) for im in images])
        best = min(best, time.perf_counter() - t0)
    prob = np.zeros(len(y))
    for tr, te in GroupKFold(args.folds).split(x, y, groups):
        prob[te] = fit_predict(logistic_regression(params.baselines.lr_C, params.seed), x[tr], y[tr], x[te])
    print(f"{len(files)} photos, {len(y)} images ({args.kind}, {args.size} px), {args.folds} folds grouped by photo")
    print(f"lr_lines ROC AUC (out of fold): {roc_auc_score(y, prob):.3f}")
    edges = [0, 8, 16, 24, np.inf]
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        sel = (y == 0) | ((shears >= lo) & (shears < hi))
        if (y[sel] == 1).sum() >= 10:
            auc = roc_auc_score(y[sel], prob[sel])
            print(f"  RS shear {lo:>4}-{hi:<4} px: AUC {auc:.3f} ({(y[sel] == 1).sum()} RS)")
    count = x[:, 0]
    print(f"segments kept per image: median {np.median(count):.0f}, none in {np.mean(count == 0):.1%} of images")
    print(f"line_features: {1000 * best / len(images):.2f} ms per image (one thread, best of {args.repeats})")


if __name__ == "__main__":
    main()
