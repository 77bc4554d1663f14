"""Would the CNN and the straight-line baseline do better together? A development experiment.

A logistic regression on the two models' logits (the CNN's `models/predictions.csv`, `lr_lines`' in
`data/baselines/lr_lines.csv`, both written by `dvc repro`) is fitted on the validation rows and scored on test
(all, drawn scenes, real photos) and on the independent recipe, beside each model alone and the plain sum of
the logits (nothing fitted).

Measured on the committed default (2026-11-27): test ROC AUC 0.828 stacked against CNN 0.817 (inside the 0.013
seed spread), external 0.927 against `lr_lines` 0.928, real test photos 0.647 against `lr_lines` 0.673: not
worth extracting line features (4 ms a tile, more than the model's 1.6) inside `scan`. The plain sum of the
logits scores 0.831 / 0.934 / 0.684, a choice read off the test sets, so it proves nothing on them.
Run: python experiments/stack_cnn_lines.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p kept off 0 and 1 (probabilities are written to 6 decimals)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def main() -> None:
    files = [ROOT / "models" / "predictions.csv", ROOT / "data" / "baselines" / "lr_lines.csv",
             ROOT / "data" / "synth" / "manifest.csv"]
    for path in files:
        if not path.is_file():
            sys.exit(f"stack_cnn_lines: {path} not found (run `dvc repro` or `dvc pull` first)")
    cnn, lines, manifest = (pd.read_csv(path) for path in files)
    if not cnn["path"].equals(lines["path"]):
        sys.exit(f"stack_cnn_lines: {files[0]} and {files[1]} list different images; rerun `dvc repro`")
    x, y = np.c_[logit(cnn["prob"].to_numpy()), logit(lines["prob"].to_numpy())], cnn["label"].to_numpy()
    val = (cnn["split"] == "val").to_numpy()
    stacked = LogisticRegression().fit(x[val], y[val]).predict_proba(x)[:, 1]
    source = cnn["path"].map(manifest.set_index("path")["source"])  # external rows are not in the manifest
    groups = {"val": cnn["split"] == "val", "test": cnn["split"] == "test",
              "test, drawn": (cnn["split"] == "test") & (source == "drawn"),
              "test, real": (cnn["split"] == "test") & (source == "real"), "external": cnn["split"] == "external"}
    print(f"{'ROC AUC':<12} {'n':>5} {'cnn':>6} {'lr_lines':>9} {'stacked':>8} {'sum':>6}")
    for name, rows in groups.items():
        rows = rows.to_numpy()
        if len(np.unique(y[rows])) < 2:
            print(f"{name:<12} {rows.sum():>5}  (one class only: no ROC AUC)")
            continue
        scores = [cnn["prob"].to_numpy()[rows], lines["prob"].to_numpy()[rows], stacked[rows], x[rows].sum(1)]
        print(f"{name:<12} {rows.sum():>5} " + " ".join(f"{roc_auc_score(y[rows], s):>{w}.3f}"
                                                     for s, w in zip(scores, (6, 9, 8, 6), strict=False)))
    print("stacked: logistic regression on the two logits, fitted on val; sum: the logits added, nothing fitted")


if __name__ == "__main__":
    main()
