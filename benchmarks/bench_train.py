"""Training speed on this machine, every figure measured in this one run (params.yaml as is):

- on-the-fly synthesis: images/s of PairStream batches (draw, warp, augment, JPEG round trip), one thread;
- training: images/s of train_on_batch on the whole network, for MobileNetV3Small and Large at the params'
  size, on fixed arrays (the baseline: no synthesis at all) and fed by the stream (synthesis on a thread,
  overlapping the step). The ratio streamed / fixed is what fresh pairs cost;
- the default `train` stage's phase 2 and `pretrain`, projected from the measured rate.

Usage: python benchmarks/bench_train.py [--steps 6] [--photos N]   (run from the repository root after
`dvc pull` or `dvc repro fetch`: it draws from data/raw; without it, from generated scenes)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from rsdetect.config import load_params
from rsdetect.pairs import PairStream, load_photos
from rsdetect.sample import make_sample_dataset

ROOT = Path(__file__).resolve().parents[1]


def rate(fn, images: int, repeat: int) -> float:
    """Images/s of `fn` (called `repeat` times, each handling `images` images), after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return images * repeat / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="timed batches per measurement")
    ap.add_argument("--photos", type=int, default=60, help="generated photos when data/raw is absent")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    s, t, pt, f = params.synthesize, params.train, params.pretrain, params.features
    import keras

    from rsdetect import backbone as m
    from rsdetect.training import build_classifier

    with tempfile.TemporaryDirectory() as tmp:
        raw = ROOT / "data" / "raw"
        if not (raw / "instances.json").is_file():
            raw = Path(tmp)
            make_sample_dataset(raw, params.seed, args.photos, 320, 240)
        photos, _ = load_photos(raw / "instances.json", params.seed, s, "train")
        stream = PairStream(photos, params.seed, s, params.augment, t.batch_size)
        synth_rate = rate(lambda: stream.batch(0, 0), t.batch_size, args.steps)
        print(f"on-the-fly synthesis: {synth_rate:.0f} images/s (one thread, {len(photos)} photos from {raw})")
        fixed = stream.batch(0, 1)
        for arch in ("small", "large"):
            keras.utils.set_random_seed(0)
            backbone = m.build_backbone(f.image_size, "none", arch)
            m.unfreeze_top_blocks(backbone, 10**6, train_batchnorm=True)
            model = build_classifier(backbone, 0.2)
            model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
            base = rate(lambda: model.train_on_batch(*fixed), t.batch_size, args.steps)
            it = iter(stream.epoch(1, args.steps + 1))
            streamed = rate(lambda: model.train_on_batch(*next(it)), t.batch_size, args.steps)
            print(f"{m.ARCHITECTURES[arch]} {f.image_size}px whole network: {base:.1f} images/s on fixed arrays, "
                  f"{streamed:.1f} fed by fresh pairs (ratio {streamed / base:.2f})")
            if arch == f.backbone:
                ft = t.finetune_epochs * t.steps_per_epoch * t.batch_size
                pre = pt.epochs * pt.steps_per_epoch * pt.batch_size
                print(f"  params.yaml: train phase 2 at most {ft} images = {ft / streamed / 60:.1f} min; "
                      f"pretrain at most {pre} images = {pre / streamed / 60:.1f} min (validation not included)")


if __name__ == "__main__":
    main()
