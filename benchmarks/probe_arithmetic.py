"""How much two arithmetic paths of one CPU move the backbone's features: the stand-in, on one machine, for two
machines whose oneDNN kernels differ (docs/reproducibility.md).

The same 64 drawn 160 px images go through the same seeded, BatchNorm-calibrated MobileNetV3Small (weights none)
three times, each in a fresh process: oneDNN on (TensorFlow's default on x86), on again, and off
(TF_ENABLE_ONEDNN_OPTS=0). Prints whether the two oneDNN runs are byte-identical, and the largest feature and
probability differences between oneDNN on and off (probabilities from a fixed random linear head on the
standardised features).
Run: python benchmarks/probe_arithmetic.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

IMAGES = 64  # enough for BatchNorm calibration and a spread of scenes; small enough for a shared 2-core machine
SIZE = 160  # features.image_size: the pipeline's input size


def features(out: Path, images: Path) -> None:
    """Child process: the features of `images`' files into `out` (.npy)."""
    from rsdetect.model.backbone import (
        build_backbone,
        extract_features,
        load_images,
        recalibrate_batchnorm,
        set_determinism,
    )

    paths = sorted(str(p) for p in (images / "images").rglob("*.*"))[:IMAGES]
    set_determinism(7, True)
    backbone = build_backbone(SIZE, "none", "small")
    recalibrate_batchnorm(backbone, load_images(paths, SIZE))
    np.save(out, extract_features(backbone, paths, SIZE, 32))


def run(tmp: Path, name: str, onednn: str) -> np.ndarray:
    out = tmp / f"{name}.npy"
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
    subprocess.run([sys.executable, __file__, "--child", str(out), str(tmp / "sample")], env=env, check=True)
    return np.load(out)


def main() -> None:
    from rsdetect.datasets.drawn import make_sample_dataset

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_sample_dataset(tmp / "sample", seed=5, n_images=IMAGES, width=SIZE, height=SIZE)
        on, again, off = run(tmp, "on", "1"), run(tmp, "again", "1"), run(tmp, "off", "0")
    scale = np.abs(on).mean()
    diff = np.abs(on - off)
    w = np.random.default_rng(0).normal(size=on.shape[1]) / np.sqrt(on.shape[1])
    mean, std = on.mean(0), on.std(0).clip(1e-6)

    def prob(f: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-((f - mean) / std) @ w))

    print(f"oneDNN on, twice: byte-identical features: {on.tobytes() == again.tobytes()}")
    print(f"oneDNN on vs off: byte-identical: {on.tobytes() == off.tobytes()}; max |feature diff| {diff.max():.2g} "
          f"(mean |feature| {scale:.2g}); max |probability diff| of a random linear head "
          f"{np.abs(prob(on) - prob(off)).max():.2g}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        features(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
