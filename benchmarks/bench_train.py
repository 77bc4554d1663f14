"""Training speed on this machine, every figure measured in this one run (params.yaml as is):

- on-the-fly synthesis: images/s of PairStream batches (draw, warp, augment, JPEG round trip), one thread;
- training: images/s of train_on_batch on the whole network, for MobileNetV3Small and Large at the params'
  size, on fixed arrays (the baseline: no synthesis at all) and fed by the stream (synthesis on a thread,
  overlapping the step). The ratio streamed / fixed is what fresh pairs cost;
- the default `train` stage's phase 2 and `pretrain`, projected from the measured rate;
- with `--devices 1,2` instead: images/s of the params' backbone on 1, 2, ... replicas (rsdetect.model.distribute:
  the global batch is train.batch_size x replicas, split across them, BatchNorm synced), on fixed arrays, with
  the ratio to the first entry. On a GPU runner the replicas are GPUs; on a CPU-only machine the CPU is split
  into that many logical devices (they share the same cores, so this checks the path, not a speed-up).

Usage: python benchmarks/bench_train.py [--steps 6] [--photos N] [--devices 1,2]   (run from the repository
root after `dvc pull` or `dvc repro fetch`: it draws from data/raw; without it, from generated scenes)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rsdetect.config import FeatureParams, load_params
from rsdetect.datasets.drawn import make_sample_dataset
from rsdetect.synth.pairs import PairStream, load_photos

ROOT = Path(__file__).resolve().parents[1]


def rate(fn, images: int, repeat: int) -> float:
    """Images/s of `fn` (called `repeat` times, each handling `images` images), after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return images * repeat / (time.perf_counter() - start)


def device_list(text: str) -> list[str | int]:
    """"1,2,auto" -> [1, 2, "auto"]: the values train.devices takes."""
    return [int(d) if d.isdigit() else d for d in text.split(",")]


def logical_cpus(n: int) -> None:
    """Without a GPU, split the CPU into `n` logical devices so that a count of n has devices to run on (before
    TensorFlow initialises; the replicas then share the same cores)."""
    import tensorflow as tf

    if n > 1 and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def replicas_rate(devices: list[str | int], f: FeatureParams, per_replica: int, stream: PairStream, steps: int) -> None:
    """Whole-network training images/s of the params' backbone on each device choice, fixed arrays, each global
    batch split across its replicas as fit_pairs does; ratios against the first choice, measured in this run."""
    import keras

    from rsdetect.model import backbone as m
    from rsdetect.model.distribute import split_batch, strategy_for, synced_batchnorm
    from rsdetect.model.training import build_classifier

    base = None
    for choice in devices:
        strategy = strategy_for(choice, "--devices")
        n = strategy.num_replicas_in_sync
        keras.utils.set_random_seed(0)
        with strategy.scope():
            backbone = m.build_backbone(f.image_size, "none", f.backbone)
            m.unfreeze_top_blocks(backbone, 10**6, train_batchnorm=True)
            model = build_classifier(backbone, 0.2)
            model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
        x, y = PairStream(stream.photos, stream.seed, stream.synth, stream.augment, per_replica * n).batch(0, 1)
        with synced_batchnorm(model, n):
            if n > 1:
                model.test_on_batch(x[:2], y[:2])  # builds what train_on_batch cannot from per-replica values
            batch = split_batch(strategy, x, y)
            speed = rate(lambda: model.train_on_batch(*batch), len(x), steps)  # noqa: B023 (called in this iteration)
        base = base or speed
        names = ", ".join(strategy.extended.worker_devices) if n > 1 else "the default device"
        print(f"{m.ARCHITECTURES[f.backbone]} {f.image_size}px whole network, devices {choice}: {n} replica(s) x "
              f"{per_replica} images ({names}): {speed:.1f} images/s (ratio {speed / base:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="timed batches per measurement")
    ap.add_argument("--photos", type=int, default=60, help="generated photos when data/raw is absent")
    ap.add_argument("--devices", type=device_list,
                    help="compare replicas instead, e.g. 1,2 or 1,auto (as train.devices)")
    args = ap.parse_args()
    if args.devices:
        logical_cpus(max((d for d in args.devices if isinstance(d, int)), default=1))
    params = load_params(ROOT / "params.yaml")
    s, t, pt, f = params.synthesize, params.train, params.pretrain, params.features
    import keras

    from rsdetect.model import backbone as m
    from rsdetect.model.training import build_classifier

    with tempfile.TemporaryDirectory() as tmp:
        raw = ROOT / "data" / "raw"
        if not (raw / "instances.json").is_file():
            raw = Path(tmp)
            make_sample_dataset(raw, params.seed, args.photos, 320, 240)
        photos, _ = load_photos(raw / "instances.json", params.seed, s, "train")
        stream = PairStream(photos, params.seed, s, params.augment, t.batch_size)
        synth_rate = rate(lambda: stream.batch(0, 0), t.batch_size, args.steps)
        print(f"on-the-fly synthesis: {synth_rate:.0f} images/s (one thread, {len(photos)} photos from {raw})")
        if args.devices:
            return replicas_rate(args.devices, f, t.batch_size, stream, args.steps)
        fixed = stream.batch(0, 1)
        for arch in ("small", "large"):
            keras.utils.set_random_seed(0)
            backbone = m.build_backbone(f.image_size, "none", arch)
            m.unfreeze_top_blocks(backbone, 10**6, train_batchnorm=True)
            model = build_classifier(backbone, 0.2)
            model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
            base = rate(lambda: model.train_on_batch(*fixed), t.batch_size, args.steps)  # noqa: B023 (called here)
            it = iter(stream.epoch(1, args.steps + 1))
            streamed = rate(lambda: model.train_on_batch(*next(it)), t.batch_size, args.steps)  # noqa: B023 (called here)
            print(f"{m.ARCHITECTURES[arch]} {f.image_size}px whole network: {base:.1f} images/s on fixed arrays, "
                  f"{streamed:.1f} fed by fresh pairs (ratio {streamed / base:.2f})")
            if arch == f.backbone:
                ft = t.finetune_epochs * t.steps_per_epoch * t.batch_size
                pre = pt.epochs * pt.steps_per_epoch * pt.batch_size
                print(f"  params.yaml: train phase 2 at most {ft} images = {ft / streamed / 60:.1f} min; "
                      f"pretrain at most {pre} images = {pre / streamed / 60:.1f} min (validation not included)")


if __name__ == "__main__":
    main()
