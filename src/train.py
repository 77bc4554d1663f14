"""Stage train: phase 1 trains the head on cached features; phase 2 (optional) fine-tunes the top blocks.

Writes the best checkpoint, per-sample probabilities, whole-set metrics and per-epoch history; logs the
run (params, per-epoch metrics, metrics, model, data hash) to MLflow.
"""
import sys
from pathlib import Path

import numpy as np

from rsdetect.cli import run_stage
from rsdetect.config import RsdetectError, load_params
from rsdetect.data import read_manifest
from rsdetect.evaluate import binary_metrics, write_predictions
from rsdetect.io import write_json


def main() -> None:
    synth, feats_dir, model_dir, metrics_path, history_path = (Path(a) for a in sys.argv[1:6])
    params = load_params()
    f, t = params.features, params.train
    import keras
    import mlflow

    from rsdetect import model as m
    from rsdetect.registry import file_md5, setup_mlflow

    m.set_determinism(params.seed, t.deterministic)
    m.use_mixed_precision_if_gpu()
    rows = read_manifest(synth / "manifest.csv")
    cached = np.load(feats_dir / "features.npz")
    if list(cached["paths"]) != [r["path"] for r in rows]:
        raise RsdetectError(f"{feats_dir / 'features.npz'}: features do not match {synth / 'manifest.csv'}; run `dvc repro features`")
    x, y = cached["features"], np.array([r["label"] for r in rows], np.float32)
    split = np.array([r["split"] for r in rows])
    tr, va = split == "train", split == "val"
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    xn = m.standardize(x, mean, std)

    setup_mlflow()
    data_hash = file_md5(synth / "manifest.csv")
    with mlflow.start_run(run_name=f"train-{f.weights if f.weights in ('none', 'imagenet') else 'localweights'}-{f.image_size}px-ft{t.finetune_blocks}"):
        mlflow.log_params({"seed": params.seed, **{f"features.{k}": v for k, v in vars(f).items()},
                           **{f"train.{k}": v for k, v in vars(t).items()}})
        mlflow.set_tag("data_md5", data_hash)
        head = m.build_head(x.shape[1], t.dropout)
        log_epoch = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: mlflow.log_metrics({f"head_{k}": float(v) for k, v in logs.items()}, step=e))
        hist = m.fit_head(head, xn[tr], y[tr], xn[va], y[va], t.head_epochs, t.head_lr, t.batch_size, t.patience * 4, [log_epoch])
        history = [{"epoch": i, "phase": "head", **{k: float(v[i]) for k, v in hist.history.items()}} for i in range(len(hist.history["loss"]))]
        backbone = keras.saving.load_model(feats_dir / "backbone.keras", compile=False)
        from_scratch = f.weights == "none"  # no learnt statistics to protect: BatchNorm trains with the rest
        model = m.assemble(backbone, head, mean, std)
        model_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = model_dir / "model.keras"
        paths = [str(synth / r["path"]) for r in rows]
        if t.finetune_blocks > 0:
            unfrozen = m.unfreeze_top_blocks(backbone, t.finetune_blocks, train_batchnorm=from_scratch)
            print(f"train: fine-tuning {len(unfrozen)} layers{' (BatchNorm too: weights none)' if from_scratch else ''}")
            ptr = [p for p, s in zip(paths, split) if s == "train"]
            pva = [p for p, s in zip(paths, split) if s == "val"]
            batch = m.gpu_batch_size(model, f.image_size, t.batch_size, t.gpu_max_batch, training=True)
            mlflow.log_param("finetune_batch_size", batch)
            train_ds = m.image_dataset(ptr, y[tr], f.image_size, batch, shuffle_seed=params.seed)
            val_ds = m.image_dataset(pva, y[va], f.image_size, batch)
            log_ft = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: mlflow.log_metrics({f"finetune_{k}": float(v) for k, v in logs.items()}, step=e))
            ft = m.fine_tune(model, train_ds, val_ds, t.finetune_epochs, t.finetune_lr, t.patience, checkpoint, [log_ft])
            history += [{"epoch": len(history) + i, "phase": "finetune", **{k: float(v[i]) for k, v in ft.history.items()}} for i in range(len(ft.history["loss"]))]
        model.save(checkpoint)
        prob = m.predict_paths(model, paths, f.image_size, f.batch_size)
        if prob.std() < 1e-6:
            raise RsdetectError("train: the model gives the same probability for every image; refusing to report metrics")
        write_predictions(model_dir / "predictions.csv", rows, prob)
        metrics = {s: binary_metrics(y[split == s], prob[split == s]) for s in ("val", "test")}
        write_json(metrics_path, {"cnn": metrics})
        write_json(history_path, history)
        mlflow.log_metrics({f"{s}_{k}": v for s, ms in metrics.items() for k, v in ms.items()})
        import mlflow.keras
        mlflow.keras.log_model(model, name="model")
    print(f"train: val {metrics['val']}\ntrain: test {metrics['test']}")


if __name__ == "__main__":
    run_stage(main)
