"""Stage train: phase 1 fits the head on cached features; phase 2 trains the network end to end on fresh pairs.

Phase 2 never sees the same pair twice: every step draws new RS/GS twins from the train photos (pairs.PairStream,
seeded by seed, train.repeat, epoch and step), with label-keeping augmentation; the fixed validation set of
`synthesize` picks the best epoch. Writes the checkpoint, per-sample probabilities (our test set and the
independent-recipe one), whole-set metrics with the train/val accuracy gap, and per-epoch history; logs the run
to MLflow.
"""
import sys
from pathlib import Path

import numpy as np

from rsdetect.config import load_params
from rsdetect.errors import RsdetectError
from rsdetect.evaluation.metrics import binary_metrics, write_predictions
from rsdetect.io import save_keras, write_json
from rsdetect.stage import run_stage
from rsdetect.synth.manifest import read_manifest

TIMING = ("train_images_per_s", "epoch_s")


def main() -> None:
    raw, synth, feats_dir, external, model_dir, metrics_path, history_path = (Path(a) for a in sys.argv[1:8])
    params = load_params()
    f, t = params.features, params.train
    import keras
    import mlflow

    from rsdetect.io import file_md5
    from rsdetect.model import backbone as m
    from rsdetect.model import head as hd
    from rsdetect.model.distribute import scaled_lr, strategy_for
    from rsdetect.model.training import fit_pairs
    from rsdetect.registry.tracking import run_tags, setup_mlflow
    from rsdetect.synth.pairs import PairStream, load_photos

    strategy = strategy_for(t.devices, "train.devices")  # before TF initialises its devices
    replicas = strategy.num_replicas_in_sync
    batch = t.batch_size * replicas  # the global batch of both phases
    seed = params.seed + 7919 * t.repeat  # repeat > 0: the same data, another draw of weights and pairs
    m.set_determinism(seed, t.deterministic)
    m.use_mixed_precision_if_gpu()
    rows = read_manifest(synth / "manifest.csv")
    cached = np.load(feats_dir / "features.npz")
    if list(cached["paths"]) != [r["path"] for r in rows]:
        raise RsdetectError(f"{feats_dir / 'features.npz'}: features do not match {synth / 'manifest.csv'}; "
                            "run `dvc repro features`")
    x, y = cached["features"], np.array([r["label"] for r in rows], np.float32)
    split = np.array([r["split"] for r in rows])
    tr, va = split == "train", split == "val"
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    xn = hd.standardize(x, mean, std)
    paths = [str(synth / r["path"]) for r in rows]

    setup_mlflow()
    weights = f.weights if f.weights in ("none", "imagenet", "pretrained") else "localweights"
    with mlflow.start_run(run_name=f"train-{f.backbone}-{weights}-{f.image_size}px", tags=run_tags()):
        mlflow.log_params({"seed": params.seed, **{f"features.{k}": v for k, v in f.model_dump().items()},
                           **{f"train.{k}": v for k, v in t.model_dump().items()}})
        mlflow.set_tag("data_md5", file_md5(synth / "manifest.csv"))
        with strategy.scope():  # every model and its optimizer on every replica; fit and fit_pairs use it
            head = hd.build_head(x.shape[1], t.dropout)
            log_epoch = keras.callbacks.LambdaCallback(
                on_epoch_end=lambda e, logs: mlflow.log_metrics({f"head_{k}": float(v) for k, v in logs.items()},
                                                                step=e))
            hist = hd.fit_head(head, xn[tr], y[tr], xn[va], y[va], t.head_epochs, scaled_lr(t.head_lr, replicas), batch,
                               t.head_patience, [log_epoch])
            history = [{"epoch": i, "phase": "head", **{k: float(v[i]) for k, v in hist.history.items()}}
                       for i in range(len(hist.history["loss"]))]
            backbone = m.build_backbone(f.image_size, "none", f.backbone)
            # the very weights (and BatchNorm statistics) features used
            backbone.load_weights(feats_dir / "backbone.weights.h5")
            model = hd.assemble(backbone, head, mean, std)
        if t.finetune_blocks > 0 and t.finetune_epochs > 0:
            # Our own pretrained or random weights: BatchNorm statistics are ours to move. ImageNet's stay frozen.
            unfrozen = m.unfreeze_top_blocks(backbone, t.finetune_blocks, train_batchnorm=f.weights != "imagenet")
            photos, skipped = load_photos(raw / "instances.json", params.seed, params.synthesize, "train")
            stream = PairStream(photos, seed, params.synthesize, params.augment, batch, t.curriculum_epochs,
                                t.curriculum_scale)
            print(f"train: {len(unfrozen)} layers learn on fresh pairs of {len(photos)} train photos "
                  f"({skipped} unreadable), {t.finetune_epochs} epochs x {t.steps_per_epoch} steps x {replicas} "
                  f"replicas x {t.batch_size} images")
            val = (m.load_images([p for p, s in zip(paths, split, strict=False) if s == "val"], f.image_size), y[va])

            def log(row: dict) -> None:
                mlflow.log_metrics({f"finetune_{k}": float(v) for k, v in row.items() if k != "epoch"},
                                   step=row["epoch"])
                print(f"train: epoch {row['epoch']:3d} loss {row['loss']:.3f} acc {row['accuracy']:.3f} | "
                      f"val loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f} AUC {row['val_roc_auc']:.3f} | "
                      f"{row['train_images_per_s']:.1f} img/s", flush=True)

            ft = fit_pairs(model, stream, t.finetune_epochs, t.steps_per_epoch, scaled_lr(t.finetune_lr, replicas),
                           t.patience, val, log, lr_end=t.finetune_lr_end)
            history += [{**r, "epoch": len(history) + i, "phase": "finetune"} for i, r in enumerate(ft)]
        model_dir.mkdir(parents=True, exist_ok=True)
        save_keras(model, model_dir / "model.keras")
        ext_rows = read_manifest(external / "manifest.csv")
        prob = hd.predict_paths(model, paths + [str(external / r["path"]) for r in ext_rows], f.image_size,
                                f.batch_size)
        if prob.std() < 1e-6:
            raise RsdetectError("train: the model gives the same probability for every image; "
                                "refusing to report metrics")
        write_predictions(model_dir / "predictions.csv", rows + ext_rows, prob)
        prob, ext_prob = prob[:len(rows)], prob[len(rows):]
        metrics = {s: binary_metrics(y[split == s], prob[split == s]) for s in ("train", "val", "test")}
        metrics["external"] = binary_metrics(np.array([r["label"] for r in ext_rows]), ext_prob)
        # Memorisation check at the chosen checkpoint: train-split photos (fixed pairs the loop never drew) vs val.
        metrics["train_val_accuracy_gap"] = metrics["train"]["accuracy"] - metrics["val"]["accuracy"]
        write_json(metrics_path, {"cnn": metrics})
        # Timing differs run to run: MLflow and the log keep it, the DVC plot stays byte-reproducible.
        write_json(history_path, [{k: v for k, v in r.items() if k not in TIMING} for r in history])
        mlflow.log_metrics({f"{s}_{k}": v for s, ms in metrics.items() if isinstance(ms, dict) for k, v in ms.items()})
        import mlflow.keras
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        # The model's own contract (float32 RGB images in 0-255 at image_size -> one probability each), stated so
        # that MLflow records it instead of warning that none was given.
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, f.image_size, f.image_size, 3), "image")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1), "probability")]))
        mlflow.keras.log_model(model, name="model", signature=signature)
    for s in ("val", "test", "external"):
        m_s = metrics[s]
        print(f"train: {s} ROC AUC {m_s['roc_auc']:.3f} accuracy {m_s['accuracy']:.3f} (n={m_s['n']})")
    print(f"train: train/val accuracy gap {metrics['train_val_accuracy_gap']:+.3f}")


if __name__ == "__main__":
    run_stage(main)
