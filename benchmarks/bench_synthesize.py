"""Synthesis speed on 640x480 photos, against two baselines measured in the same run:

- a straightforward per-pixel reference of the rolling-shutter warp (Python loops, bilinear sampling),
  the way the prior attempt worked, which ran at about 4 images/s per core;
- just decoding the photo and encoding two JPEGs, the floor any synthesis pays (the limit).

Usage: python benchmarks/bench_synthesize.py [--photos 48]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import SynthParams
from rsdetect.data import synthesize
from rsdetect.sample import make_sample_dataset
from rsdetect.shutter import Motion, rolling_rows


def per_pixel_rolling_shutter(img: np.ndarray, dx_rows: np.ndarray) -> np.ndarray:
    """Reference: every output pixel sampled one by one (bilinear in x), as a straightforward loop would."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            sx = x - dx_rows[y]
            x0 = int(np.floor(sx))
            if 0 <= x0 < w - 1:
                a = sx - x0
                out[y, x] = (1 - a) * img[y, x0] + a * img[y, x0 + 1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--reference-photos", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        make_sample_dataset(raw, seed=1, n_images=args.photos, width=640, height=480)
        files = sorted((raw / "images").glob("*.jpg"))

        t = time.perf_counter()
        for f in files:
            img = cv2.imdecode(np.fromfile(f, np.uint8), cv2.IMREAD_COLOR)
            for _ in range(2):
                cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        limit = 2 * len(files) / (time.perf_counter() - t)  # images/s on one core

        img = cv2.imread(str(files[0]))
        dx, _ = rolling_rows(Motion("pan", speed=20.0), img.shape[0], 1.0)
        t = time.perf_counter()
        for _ in range(args.reference_photos):
            per_pixel_rolling_shutter(img, dx)
        reference = args.reference_photos / (time.perf_counter() - t)  # warps/s on one core: an upper bound on images/s

        p = SynthParams(size=224, min_person_area=100)
        runs = {}
        for workers in (1, cores):
            t = time.perf_counter()
            report = synthesize(raw / "instances.json", Path(tmp) / f"synth{workers}", 1, replace(p, workers=workers))
            runs[workers] = 2 * report["pairs"] / (time.perf_counter() - t)
    print(f"{len(files)} photos 640x480 -> {report['pairs']} pairs (2 images each) at 224 px, {cores} cores")
    print(f"per-pixel reference warp : {reference:8.2f} images/s per core (warp only)")
    print(f"decode + 2x encode limit : {limit:8.1f} images/s per core")
    for workers, rate in runs.items():
        print(f"rsdetect synthesize w={workers}: {rate:8.1f} images/s ({rate / workers:.1f} per core)")
    per_core = runs[1]
    print(f"ratio vs per-pixel reference (per core): {per_core / reference:8.1f}x")
    print(f"ratio vs prior attempt's 4 images/s per core: {per_core / 4:8.1f}x")
    print(f"fraction of the decode+encode limit (per core): {per_core / limit:8.2f}")
    print(f"speed-up {cores} workers vs 1: {runs[cores] / runs[1]:.2f}x")


if __name__ == "__main__":
    main()
