"""Stage baselines: logistic regression and random forest on downsampled pixels and on cached backbone features,
and logistic regression on straight-line tilt features (the physics baseline)."""
import sys
from pathlib import Path

import numpy as np

from rsdetect.baselines import fit_predict, logistic_regression, pixel_features, random_forest
from rsdetect.cli import run_stage
from rsdetect.config import load_params
from rsdetect.data import read_manifest
from rsdetect.evaluate import binary_metrics, write_predictions
from rsdetect.io import write_json
from rsdetect.lines import line_features_of_paths


def main() -> None:
    synth, feats_dir, out, metrics_path = (Path(a) for a in sys.argv[1:5])
    params = load_params()
    b = params.baselines
    rows = read_manifest(synth / "manifest.csv")
    y = np.array([r["label"] for r in rows])
    split = np.array([r["split"] for r in rows])
    tr = split == "train"
    paths = [synth / r["path"] for r in rows]
    models = {"lr": lambda: logistic_regression(b.lr_C, params.seed),
              "rf": lambda: random_forest(b.rf_trees, b.rf_max_depth, params.seed)}
    # Each input with the models run on it. Lines: LR only, the simplest reading of a few physical features.
    inputs = {"pixels": (pixel_features(paths, b.pixel_size), ("lr", "rf")),
              "features": (np.load(feats_dir / "features.npz")["features"], ("lr", "rf")),
              "lines": (line_features_of_paths(paths, b.lines), ("lr",))}
    out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for input_name, (x, model_names) in inputs.items():
        for model_name in model_names:
            make = models[model_name]
            name = f"{model_name}_{input_name}"
            prob = fit_predict(make(), x[tr], y[tr], x)
            write_predictions(out / f"{name}.csv", rows, prob)
            metrics[name] = {s: binary_metrics(y[split == s], prob[split == s]) for s in ("val", "test")}
            print(f"baselines: {name} test ROC AUC {metrics[name]['test']['roc_auc']:.3f}")
    write_json(metrics_path, metrics)


if __name__ == "__main__":
    run_stage(main)
