"""Stage evaluate: operating threshold from the validation sweep (target precision), test metrics at it for the
CNN and every baseline, recall by kind and magnitude, plots (DVC JSON + PNG) and a markdown report."""
import sys
from pathlib import Path

import numpy as np

from rsdetect.cli import run_stage
from rsdetect.config import load_params
from rsdetect.data import read_manifest
from rsdetect.evaluate import (binary_metrics, markdown_report, operating_threshold, read_predictions,
                               recall_breakdown, threshold_sweep, write_plots)
from rsdetect.io import atomic_write_text, write_json


def main() -> None:
    synth, model_dir, baselines_dir, metrics_path, plot_dir, fig_dir, report_path = (Path(a) for a in sys.argv[1:8])
    params = load_params()
    e = params.evaluate
    rows = read_manifest(synth / "manifest.csv")
    test_rows = [r for r in rows if r["split"] == "test"]
    sources = {"cnn": model_dir / "predictions.csv", **{p.stem: p for p in sorted(baselines_dir.glob("*.csv"))}}
    summary = {"target_precision": e.target_precision, "models": {}}
    tests = {}
    for name, path in sources.items():
        preds = read_predictions(path)
        val, test = preds["val"], preds["test"]
        threshold, reached = operating_threshold(val["label"], val["prob"], e.target_precision)
        summary["models"][name] = {
            "threshold": threshold, "target_reached": reached,
            "val": binary_metrics(val["label"], val["prob"], threshold),
            "test": binary_metrics(test["label"], test["prob"], threshold),
            "breakdown": recall_breakdown(test_rows, test["prob"], threshold),
        }
        tests[name] = test
    cnn = summary["models"]["cnn"]
    summary["threshold"] = cnn["threshold"]
    val = read_predictions(sources["cnn"])["val"]
    fig_dir.mkdir(parents=True, exist_ok=True)
    write_plots(plot_dir, fig_dir, tests, tests["cnn"], cnn["threshold"], threshold_sweep(val["label"], val["prob"], e.n_thresholds))
    write_json(metrics_path, summary)
    atomic_write_text(report_path, markdown_report(summary))
    for name, m in summary["models"].items():
        t = m["test"]
        print(f"evaluate: {name:12s} threshold {m['threshold']:.3f} test ROC AUC {t['roc_auc']:.3f} precision {t['precision']:.3f} recall {t['recall']:.3f}")


if __name__ == "__main__":
    run_stage(main)
