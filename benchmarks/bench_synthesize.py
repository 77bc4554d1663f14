"""Synthesis speed on 640x480 photos, against two baselines measured in the same run:

- a straightforward per-pixel reference of the rolling-shutter warp (Python loops, bilinear sampling),
  the way the prior attempt worked, which ran at about 4 images/s per core;
- just decoding the photo and encoding the two output JPEGs (224 px), the floor any synthesis pays (the limit).

Per-core figures run with OpenCV on one thread; each timing is the best of --repeats runs, interleaved,
so a noisy neighbour slows both sides alike.

Usage: python benchmarks/bench_synthesize.py [--photos 96] [--repeats 3] [--coco INSTANCES_JSON | --generated]
                                            [--size 224] [--pairs-per-photo 1]
Photos: the real COCO sample in ../shared where present (or --coco INSTANCES_JSON, images/ beside it),
else --photos generated 640x480 scenes.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import SynthParams, load_params, updated
from rsdetect.datasets.drawn import make_sample_dataset
from rsdetect.shutter import Motion, rolling_rows
from rsdetect.synth.twins import synthesize

SHARED_COCO = (Path(__file__).resolve().parents[2]
               / "shared/data/coco-person-sample/instances_person_train2017_sample.json")


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


def decode_encode_limit(files: list[Path], size: int, quality: int, per_photo: int = 2,
                        out: Path | None = None) -> float:
    """Images/s of decoding each photo and encoding `per_photo` size x size JPEGs (and writing them, given `out`)."""
    if out is not None:
        out.mkdir()
    t = time.perf_counter()
    for i, f in enumerate(files):
        img = cv2.imdecode(np.fromfile(f, np.uint8), cv2.IMREAD_COLOR)
        crop = np.ascontiguousarray(img[:size, :size])
        for k in range(per_photo):
            ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if out is not None:
                buf.tofile(out / f"{i}_{k}.jpg")
    return per_photo * len(files) / (time.perf_counter() - t)


def synth_rate(instances: Path, out: Path, p: SynthParams) -> tuple[float, int]:
    """Images/s (two per pair) of the real synthesize, start-up and file writes included."""
    t = time.perf_counter()
    report = synthesize(instances, out, 1, p)
    return 2 * report["pairs"] / (time.perf_counter() - t), report["pairs"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-photos", type=int, default=2)
    ap.add_argument("--coco", type=Path, help="a COCO instances JSON with images/ beside it (real photos)")
    ap.add_argument("--generated", action="store_true", help="generated photos even where ../shared has real ones")
    ap.add_argument("--size", type=int, default=224, help="output side in px")
    ap.add_argument("--pairs-per-photo", type=int, default=1, help="as synthesize.pairs_per_photo (the limit then "
                    "decodes once and encodes 2 images per pair)")
    args = ap.parse_args()
    if args.coco is None and not args.generated and SHARED_COCO.is_file():
        args.coco = SHARED_COCO  # real photographs decode like the data users have; generated ones are flatter
    cores = os.cpu_count() or 1
    cv2.setNumThreads(1)  # per-core figures: the pool's workers run OpenCV on one thread each too
    p = updated(load_params(Path(__file__).resolve().parents[1] / "params.yaml").synthesize, size=args.size,
                min_person_area=100, pairs_per_photo=args.pairs_per_photo)
    # Write to RAM (/dev/shm) where there is one: creating a file on this machine's disks took 0.03 to 1 ms,
    # varying minute to minute, which would swamp the compute being compared. Else data/, the pipeline's own disk.
    work = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(__file__).resolve().parents[1] / "data"
    work.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=".bench-synthesize-") as tmp:
        if args.coco:
            instances = args.coco
            files = sorted((args.coco.parent / "images").glob("*.jpg"))
            source = f"real COCO photos ({args.coco.parent.name})"
        else:
            make_sample_dataset(Path(tmp) / "raw", seed=1, n_images=args.photos, width=640, height=480)
            instances = Path(tmp) / "raw" / "instances.json"
            files = sorted((Path(tmp) / "raw" / "images").glob("*.jpg"))
            source = "generated photos 640x480"

        img = cv2.imread(str(files[0]))
        dx, _ = rolling_rows(Motion("pan", speed=20.0), img.shape[0], 1.0)
        t = time.perf_counter()
        for _ in range(args.reference_photos):
            per_pixel_rolling_shutter(img, dx)
        reference = args.reference_photos / (time.perf_counter() - t)  # warps/s on one core: an upper bound on images/s

        limits, write_limits, runs = [], [], {1: [], cores: []}
        for r in range(args.repeats):
            per_photo = 2 * p.pairs_per_photo
            limits.append(decode_encode_limit(files, p.size, p.jpeg_quality, per_photo))
            write_limits.append(decode_encode_limit(files, p.size, p.jpeg_quality, per_photo, Path(tmp) / f"limit_{r}"))
            for workers in runs:
                rate, pairs = synth_rate(instances, Path(tmp) / f"synth{workers}_{r}", updated(p, workers=workers))
                runs[workers].append(rate)
    limit, write_limit, best = max(limits), max(write_limits), {w: max(v) for w, v in runs.items()}
    print(f"outputs written under {work}")
    print(f"{len(files)} {source} -> {pairs} pairs (2 images each; {p.pairs_per_photo} per photo) at {p.size} px, "
          f"{cores} cores, best of {args.repeats}")
    print(f"per-pixel reference warp : {reference:8.2f} images/s per core (warp only)")
    print(f"decode + {2 * p.pairs_per_photo}x encode limit : {limit:8.1f} images/s per core")
    print(f"  ... and writing the files: {write_limit:8.1f} images/s per core (synthesize writes its outputs too)")
    for workers, rate in best.items():
        print(f"rsdetect synthesize w={workers}: {rate:8.1f} images/s ({rate / workers:.1f} per core)")
    per_core = best[1]
    print(f"ratio vs per-pixel reference (per core): {per_core / reference:8.1f}x")
    print(f"ratio vs prior attempt's 4 images/s per core: {per_core / 4:8.1f}x")
    print(f"fraction of the decode+encode limit (per core): {per_core / limit:8.2f}")
    print(f"fraction of the decode+encode+write limit (per core): {per_core / write_limit:8.2f}")
    print(f"speed-up {cores} workers vs 1: {best[cores] / best[1]:.2f}x")


if __name__ == "__main__":
    main()
