"""Stage baselines: logistic regression and random forest on downsampled pixels and on cached backbone features,
and logistic regression on straight-line tilt features (the physics baseline). Trained on the train split;
predictions for every split and for the independent-recipe test set (data/external)."""
import sys
from pathlib import Path

import numpy as np

from rsdetect.config import load_params
from rsdetect.evaluation.baseline_models import fit_predict, logistic_regression, pixel_features, random_forest
from rsdetect.evaluation.lines import line_features_of_paths
from rsdetect.evaluation.metrics import binary_metrics, write_predictions
from rsdetect.io import write_json
from rsdetect.stage import run_stage
from rsdetect.synth.manifest import read_manifest


def main() -> None:
    synth, external, feats_dir, out, metrics_path = (Path(a) for a in sys.argv[1:6])
    params = load_params()
    b = params.baselines
    rows = read_manifest(synth / "manifest.csv")
    ext_rows = read_manifest(external / "manifest.csv")
    y = np.array([r["label"] for r in rows])
    split = np.array([r["split"] for r in rows])
    tr = split == "train"
    paths = [synth / r["path"] for r in rows]
    ext_paths = [external / r["path"] for r in ext_rows]
    y_ext = np.array([r["label"] for r in ext_rows])
    models = {"lr": lambda: logistic_regression(b.lr_C, params.seed),
              "rf": lambda: random_forest(b.rf_trees, b.rf_max_depth, params.seed)}
    # Each input (ours, external) with the models run on it. Lines: LR only, the simplest reading of a few
    # physical features. Pixels are downsampled from any size, lines are measured relative to the height.
    inputs = {"pixels": (pixel_features(paths, b.pixel_size), pixel_features(ext_paths, b.pixel_size), ("lr", "rf")),
              "features": (np.load(feats_dir / "features.npz")["features"],
                           np.load(feats_dir / "external.npz")["features"], ("lr", "rf")),
              "lines": (line_features_of_paths(paths, b.lines), line_features_of_paths(ext_paths, b.lines), ("lr",))}
    out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for input_name, (x, x_ext, model_names) in inputs.items():
        for model_name in model_names:
            make = models[model_name]
            name = f"{model_name}_{input_name}"
            prob = fit_predict(make(), x[tr], y[tr], np.concatenate([x, x_ext]))
            write_predictions(out / f"{name}.csv", rows + ext_rows, prob)
            prob, ext_prob = prob[:len(rows)], prob[len(rows):]
            metrics[name] = {s: binary_metrics(y[split == s], prob[split == s]) for s in ("val", "test")}
            metrics[name]["external"] = binary_metrics(y_ext, ext_prob)
            print(f"baselines: {name} test ROC AUC {metrics[name]['test']['roc_auc']:.3f}, "
                  f"external {metrics[name]['external']['roc_auc']:.3f}")
    write_json(metrics_path, metrics)


if __name__ == "__main__":
    run_stage(main)
