"""Does the detector get better on real photos with more real photos in pretraining? A development experiment.

It continues the committed backbone's pretraining (data/pretrain, as `pretrain` writes it) for --epochs on fresh
pairs of one photo set, and after every epoch scores fixed pairs drawn from a seeded half ("B") of the real
photos outside the repository (../shared's samples minus the embedded ones) that no set trains on:
  mix   the committed pretraining set: the train photos of the embedded default (drawn scenes and real photos)
  real  only the real train photos of the embedded default
  more  those real photos plus the other half ("A") of the outside photos
The outside photos are read at run time and never written anywhere: most of their licences forbid shipping
them, so a model trained on them must not be committed (this script saves nothing).

Measured on 2 CPU cores (2026-11-27; 20 epochs of 2,048 images each, 15-17 min per set at 41-46 images/s):
mean ROC AUC on B over the last 10 epochs: mix 0.607, real 0.610, more 0.635 (README, "How good is it").
Run: python experiments/more_real_photos.py --set {mix,real,more} [--epochs 20] [--lr 3e-4]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
B_TAG = 7  # keeps the held-out pairs' draws apart from the training stream's


def outside_photos(folders: list[Path], synth, split_seed: int) -> tuple[list[tuple], list[tuple]]:
    """The outside photos (in `folders`, not embedded) decoded as pair-stream photos, split in two seeded halves;
    an unreadable photo is left out and counted, as check-photos does."""
    from rsdetect.evaluation.photos import held_out_photos
    from rsdetect.synth.twins import SkipImage, decode_image, usable_people

    held = held_out_photos(folders, [ROOT / "data" / "coco-licensed" / "instances.json"])
    photos = []
    for path, im, anns in held:
        try:
            image = decode_image(path.read_bytes(), str(path))
        except (OSError, SkipImage) as exc:
            print(f"more_real_photos: {path}: skipped ({exc})", file=sys.stderr)
            continue
        photos.append((im["id"], image, usable_people(anns, *image.shape[:2], synth)))
    if len(photos) < len(held):
        print(f"more_real_photos: {len(held) - len(photos)} of {len(held)} outside photos skipped", file=sys.stderr)
    order = np.random.default_rng(split_seed).permutation(len(photos))
    half = len(photos) // 2
    return [photos[i] for i in order[:half]], [photos[i] for i in order[half:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["mix", "real", "more"], required=True, help="what pretraining continues on")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch (default pretrain.steps_per_epoch)")
    ap.add_argument("--lr", type=float, default=3e-4, help="start rate, cosine decay to lr x --lr-end")
    ap.add_argument("--lr-end", type=float, default=0.05)
    ap.add_argument("--val-pairs", type=int, default=512, help="fixed pairs drawn from the held-out half B")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data",
                    help="folder with coco-person-sample and coco-scenes-sample")
    ap.add_argument("--split-seed", type=int, default=12345, help="which outside photos fall in A and B")
    args = ap.parse_args()

    folders = [args.shared / "coco-person-sample", args.shared / "coco-scenes-sample"]
    weights = ROOT / "data" / "pretrain" / "backbone.weights.h5"
    for needed in [*folders, weights]:
        if not needed.exists():
            sys.exit(f"more_real_photos: {needed} not found (outside photos in --shared; `dvc pull` for the backbone)")

    from rsdetect.config import load_params
    from rsdetect.datasets.embedded import DRAWN_ID_OFFSET
    from rsdetect.model import backbone as m
    from rsdetect.model.training import build_classifier, fit_pairs
    from rsdetect.synth.pairs import PairStream, fixed_pairs, load_photos

    os.chdir(ROOT)  # params.yaml and data/ are read relative to the repository
    params = load_params()
    s, pt, f = params.synthesize, params.pretrain, params.features
    m.set_determinism(params.seed, True)
    a, b = outside_photos(folders, s, args.split_seed)
    train, _ = load_photos(ROOT / "data" / "raw" / "instances.json", params.seed, s, "train")
    if args.set != "mix":
        real = [p for p in train if p[0] < DRAWN_ID_OFFSET]  # drawn scenes' ids start there
        train = real + (a if args.set == "more" else [])
    print(f"{args.set}: {len(train)} train photos; held-out B: {len(b)} photos, {args.val_pairs} pairs", flush=True)

    val = fixed_pairs(b, params.seed, s, args.val_pairs, tag=B_TAG)
    backbone = m.build_backbone(f.image_size, "pretrained", f.backbone, weights_file=weights)
    m.unfreeze_top_blocks(backbone, 10**6, train_batchnorm=True)  # as pretrain trains it: everything
    model = build_classifier(backbone, pt.dropout)
    # Another draw of pairs than the committed pretraining's (seed + 1), the same augmentation and motions.
    stream = PairStream(train, params.seed + 1, s, params.augment, pt.batch_size, 0, 1.0)

    def log(row: dict) -> None:
        print(f"{args.set}: epoch {row['epoch']:3d} train acc {row['accuracy']:.3f} | "
              f"B ROC AUC {row['val_roc_auc']:.3f}"
              f" | {row['train_images_per_s']:.1f} img/s", flush=True)

    start = time.perf_counter()
    history = fit_pairs(model, stream, args.epochs, args.steps or pt.steps_per_epoch, args.lr,
                        args.epochs + 1, val, log, lr_end=args.lr_end)  # patience above epochs: run them all
    last = history[-10:]
    print(f"{args.set}: {len(history)} epochs in {(time.perf_counter() - start) / 60:.1f} min; B ROC AUC over the last "
          f"{len(last)}: mean {np.mean([r['val_roc_auc'] for r in last]):.3f}, train accuracy "
          f"{np.mean([r['accuracy'] for r in last]):.3f}")


if __name__ == "__main__":
    main()
