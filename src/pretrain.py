"""Stage pretrain: the whole backbone learns rolling shutter from scratch on fresh pairs of the train photos.

The offline default's better start than random weights, made by the pipeline itself: it runs once (long on a
CPU, minutes on a GPU); its weights are a DVC output pushed to the in-repo remote, so `dvc repro --pull` on a
fresh clone pulls them instead of recomputing. Only train-split photos are drawn from; validation pairs come
from val-split photos; no test photo is ever read.
"""
import sys
import time
from pathlib import Path

from rsdetect.config import load_params
from rsdetect.io import write_json
from rsdetect.stage import run_stage

VAL_TAG = 999_999  # the epoch index of the fixed validation pairs: beyond any real epoch, so never drawn in training


def main() -> None:
    raw, out, metrics_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    params = load_params()
    s, pt, f = params.synthesize, params.pretrain, params.features
    from rsdetect.model import backbone as m
    from rsdetect.model.distribute import scaled_lr, strategy_for
    from rsdetect.model.training import build_classifier, fit_pairs
    from rsdetect.synth.pairs import PairStream, fixed_pairs, load_photos

    strategy = strategy_for(pt.devices, "pretrain.devices")  # before TF initialises its devices
    replicas = strategy.num_replicas_in_sync
    m.set_determinism(params.seed, True)
    m.use_mixed_precision_if_gpu()
    train_photos, skipped_train = load_photos(raw / "instances.json", params.seed, s, "train")
    val_photos, skipped_val = load_photos(raw / "instances.json", params.seed, s, "val")
    val = fixed_pairs(val_photos, params.seed, s, pt.val_pairs, tag=VAL_TAG)
    with strategy.scope():  # the variables live on every replica
        backbone = m.build_backbone(f.image_size, "none", f.backbone)
        m.unfreeze_top_blocks(backbone, 10**6, train_batchnorm=True)  # everything, BatchNorm at scratch momentum
        model = build_classifier(backbone, pt.dropout)
    stream = PairStream(train_photos, params.seed, s, params.augment, pt.batch_size * replicas, pt.curriculum_epochs,
                        pt.curriculum_scale)
    print(f"pretrain: {len(train_photos)} train photos ({skipped_train} unreadable), {len(val_photos)} val photos, "
          f"{pt.epochs} epochs x {pt.steps_per_epoch} steps x {replicas} replicas x {pt.batch_size} images, "
          f"{m.ARCHITECTURES[f.backbone]} at {f.image_size}px")

    def log(row: dict) -> None:
        print(f"pretrain: epoch {row['epoch']:3d} loss {row['loss']:.3f} acc {row['accuracy']:.3f} | val loss "
              f"{row['val_loss']:.3f} acc {row['val_accuracy']:.3f} AUC {row['val_roc_auc']:.3f} "
              f"| shear x{row['shear_scale']:.2f} "
              f"| lr {row['lr']:.2e} | {row['train_images_per_s']:.1f} img/s, {row['epoch_s']:.0f} s", flush=True)

    start = time.perf_counter()
    history = fit_pairs(model, stream, pt.epochs, pt.steps_per_epoch, scaled_lr(pt.lr, replicas), pt.patience, val, log,
                        lr_end=pt.lr_end)
    wall = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(out / "backbone.weights.h5")  # the best epoch's (fit_pairs restores them)
    write_json(out / "history.json", history)
    best = max(history, key=lambda r: r["val_roc_auc"])
    images = sum(pt.steps_per_epoch * stream.batch_size for _ in history)
    write_json(metrics_path, {"best_epoch": best["epoch"], "epochs_run": len(history),
                              "val_roc_auc": best["val_roc_auc"], "val_accuracy": best["val_accuracy"],
                              "train_accuracy": best["accuracy"],
                              "images_seen": images, "wall_s": round(wall, 1), "images_per_s": round(images / wall, 1)})
    print(f"pretrain: best epoch {best['epoch']} val AUC {best['val_roc_auc']:.3f}; {images} images in "
          f"{wall / 60:.1f} min ({images / wall:.1f} img/s)")


if __name__ == "__main__":
    run_stage(main)
