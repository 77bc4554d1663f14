"""Stage evaluate: operating threshold from the validation sweep (target precision), test metrics at it for the
CNN and every baseline, recall by kind and magnitude, plots (DVC JSON + PNG) and a markdown report.

Where a predictions CSV also has rows of split "external" (the independent-recipe test set, rsdetect.synth.rengarajan),
that model gets an `external` block at the same threshold; the optional 8th argument, the external manifest,
adds recall by shear bin."""
import sys
from pathlib import Path

from rsdetect.config import load_params
from rsdetect.errors import RsdetectError
from rsdetect.evaluation.metrics import (
    binary_metrics,
    external_metrics,
    markdown_report,
    operating_threshold,
    read_predictions,
    recall_breakdown,
    shear_breakdown,
    threshold_sweep,
    write_plots,
)
from rsdetect.io import atomic_write_text, write_json
from rsdetect.serve.shear import estimate_paths
from rsdetect.stage import run_stage
from rsdetect.synth.manifest import read_manifest


def main() -> None:
    synth, model_dir, baselines_dir, metrics_path, plot_dir, fig_dir, report_path = (Path(a) for a in sys.argv[1:8])
    external_manifest = Path(sys.argv[8]) if len(sys.argv) > 8 else None
    params = load_params()
    e = params.evaluate
    rows = read_manifest(synth / "manifest.csv")
    test_rows = [r for r in rows if r["split"] == "test"]
    sources = {"cnn": model_dir / "predictions.csv", **{p.stem: p for p in sorted(baselines_dir.glob("*.csv"))}}
    summary = {"target_precision": e.target_precision, "models": {}}
    tests = {}
    external_rows = None  # read once, only if some model has external predictions
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
        if len(preds["external"]["label"]):
            if external_manifest is not None and external_rows is None:
                if not external_manifest.is_file():
                    raise RsdetectError(f"{external_manifest}: external manifest not found; run `dvc repro external`")
                external_rows = read_manifest(external_manifest)
            summary["models"][name]["external"] = external_metrics(preds["external"], threshold, external_rows)
        tests[name] = test
    cnn = summary["models"]["cnn"]
    summary["threshold"] = cnn["threshold"]
    # The hand-off to correction: how far the shear estimate of a test image is from its true shear.
    estimates = estimate_paths([synth / r["path"] for r in test_rows], params.shear)
    summary["shear"] = {"method": "median slope of near-vertical gradients", **shear_breakdown(test_rows, estimates)}
    val = read_predictions(sources["cnn"])["val"]
    fig_dir.mkdir(parents=True, exist_ok=True)
    sweep = threshold_sweep(val["label"], val["prob"], e.n_thresholds)
    write_plots(plot_dir, fig_dir, tests, tests["cnn"], cnn["threshold"], sweep)
    write_json(metrics_path, summary)
    atomic_write_text(report_path, markdown_report(summary))
    for name, m in summary["models"].items():
        t = m["test"]
        print(f"evaluate: {name:12s} threshold {m['threshold']:.3f} test ROC AUC {t['roc_auc']:.3f} "
              f"precision {t['precision']:.3f} recall {t['recall']:.3f}")
        if "external" in m:
            x = m["external"]
            print(f"evaluate: {name:12s} external (Rengarajan et al. 2017) ROC AUC {x['roc_auc']:.3f} "
                  f"precision {x['precision']:.3f} recall {x['recall']:.3f} (n={x['n']})")
    sh = summary["shear"]
    if sh["rs"]["n"]:
        print(f"evaluate: shear estimate MAE {sh['rs']['mae_px']:.2f} px on {sh['rs']['n']} RS test images (" +
              ", ".join(f"{k} {v['mae_px']:.2f}" for k, v in sh["by_kind"].items()) +
              f"), mean |estimate| on twins {sh['twins']['mean_abs_px']:.2f} px")


if __name__ == "__main__":
    run_stage(main)
