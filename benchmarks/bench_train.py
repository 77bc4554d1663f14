"""Training speed on the embedded default (params.yaml as is), all measured in one run on this machine:

- feature extraction: images/s of the frozen backbone over every synthesized image (computed once, cached);
- phase 1 (this project): the `train` stage's work on cached features, i.e. training the head for the epochs
  early stopping lets it run, and the same plus the one-off feature extraction;
- the prior attempt's way: the frozen model trained end to end on images, so the backbone runs on every image
  every epoch. It is timed for --e2e-epochs epochs and scaled to the epochs phase 1 ran;
- fine-tuning: images/s of training the top 2 blocks (BatchNorm frozen, as with ImageNet weights) and the
  whole backbone with BatchNorm (from scratch, the offline default).

Usage: python benchmarks/bench_train.py [--e2e-epochs 2] [--photos N]   (run from the repository root)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from rsdetect.config import load_params
from rsdetect.data import read_manifest, synthesize
from rsdetect.sample import make_sample_dataset

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--e2e-epochs", type=int, default=2)
    ap.add_argument("--photos", type=int, help="generated photos (default: fetch.sample.n_images)")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    f, t = params.features, params.train
    import keras

    from rsdetect import model as m

    with tempfile.TemporaryDirectory() as tmp:
        raw, synth = Path(tmp) / "raw", Path(tmp) / "synth"
        s = params.fetch.sample
        make_sample_dataset(raw, params.seed, args.photos or s.n_images, s.width, s.height)
        synthesize(raw / "instances.json", synth, params.seed, params.synthesize)
        rows = read_manifest(synth / "manifest.csv")
        paths = np.array([str(synth / r["path"]) for r in rows])
        y = np.array([r["label"] for r in rows], np.float32)
        split = np.array([r["split"] for r in rows])
        tr, va = split == "train", split == "val"

        m.set_determinism(params.seed, t.deterministic)
        backbone = m.build_backbone(f.image_size, f.weights if f.weights != "imagenet" else "none")
        if f.weights != "imagenet":
            m.recalibrate_batchnorm(backbone, m.load_images(list(paths[tr][: f.calibration_images]), f.image_size))
        m.extract_features(backbone, list(paths[:f.batch_size]), f.image_size, f.batch_size)  # warm-up (tracing)
        feats, t_feat = timed(m.extract_features, backbone, list(paths), f.image_size, f.batch_size)

        mean, std = feats[tr].mean(0), feats[tr].std(0) + 1e-6
        xn = m.standardize(feats, mean, std)
        head = m.build_head(feats.shape[1], t.dropout)
        hist, t_head = timed(m.fit_head, head, xn[tr], y[tr], xn[va], y[va], t.head_epochs, t.head_lr, t.batch_size,
                             t.patience * 4)
        head_epochs = len(hist.history["loss"])

        # The prior attempt's way: the same frozen backbone and head, trained on images end to end.
        backbone.trainable = False
        e2e = m.assemble(backbone, m.build_head(feats.shape[1], t.dropout), mean, std)
        e2e.compile(optimizer=keras.optimizers.Adam(t.head_lr), loss="binary_crossentropy")
        train_ds = m.image_dataset(list(paths[tr]), y[tr], f.image_size, t.batch_size, shuffle_seed=params.seed)
        val_ds = m.image_dataset(list(paths[va]), y[va], f.image_size, t.batch_size)
        e2e.fit(train_ds.take(1), epochs=1, verbose=0)  # warm-up (tracing)
        _, t_e2e = timed(e2e.fit, train_ds, validation_data=val_ds, epochs=args.e2e_epochs, verbose=0)
        t_e2e_full = t_e2e / args.e2e_epochs * head_epochs

        rates = {}
        saved = os.path.join(tmp, "backbone.keras")  # each fine-tuning run starts from the same backbone weights
        backbone.save(saved)
        for name, blocks, bn in (("top 2 blocks", 2, False), ("whole backbone+BN", 15, True)):
            ft_backbone = keras.saving.load_model(saved, compile=False)
            m.unfreeze_top_blocks(ft_backbone, blocks, train_batchnorm=bn)
            model = m.assemble(ft_backbone, head, mean, std)
            model.compile(optimizer=keras.optimizers.Adam(t.finetune_lr), loss="binary_crossentropy")
            model.fit(train_ds.take(1), epochs=1, verbose=0)  # warm-up (tracing)
            _, secs = timed(model.fit, train_ds, epochs=1, verbose=0)
            rates[name] = int(tr.sum()) / secs

    n, ntr, nva = len(paths), int(tr.sum()), int(va.sum())
    print(f"embedded default: {n} images ({ntr} train, {nva} val) at {f.image_size} px, weights={f.weights}, "
          f"{os.cpu_count()} cores")
    print(f"feature extraction          : {n / t_feat:8.1f} images/s ({t_feat:.1f} s for all {n}, once)")
    print(f"phase 1 head on cached feats: {t_head:8.1f} s for {head_epochs} epochs")
    print(f"phase 1 incl. extraction    : {t_head + t_feat:8.1f} s")
    print(f"frozen end to end (prior)   : {t_e2e_full:8.1f} s for {head_epochs} epochs "
          f"(measured {t_e2e:.1f} s for {args.e2e_epochs}, {(ntr + nva) * args.e2e_epochs / t_e2e:.1f} train+val images/s)")
    print(f"ratio end-to-end / phase 1 head only      : {t_e2e_full / t_head:8.1f}x")
    print(f"ratio end-to-end / phase 1 incl. features : {t_e2e_full / (t_head + t_feat):8.1f}x")
    for name, rate in rates.items():
        print(f"fine-tuning, {name:16s}: {rate:8.1f} train images/s")


if __name__ == "__main__":
    main()
