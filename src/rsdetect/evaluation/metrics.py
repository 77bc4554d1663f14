"""Metrics over whole sets (sklearn.metrics, never averaged per batch), threshold choice on validation,
breakdowns by distortion kind and magnitude, and plots as DVC JSON plus PNG.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from rsdetect.errors import RsdetectError
from rsdetect.io import atomic_write_text, write_json

# Effective-shear bins (px) of the recall and shear-error breakdowns: doublings, because what a shear looks like
# depends on its size relative to the image (4 px is barely visible at 160 px, 32 px is plain); fixed, so
# reports of different runs compare bin by bin.
MAGNITUDE_BINS = (0, 4, 8, 16, 32, float("inf"))
SPLITS = ("train", "val", "test", "external")  # external: the independent-recipe test set (rsdetect.synth.rengarajan)
EXTERNAL_TITLE = "Independent-recipe test set (Rengarajan et al. 2017)"


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 at `threshold`, and ROC/PR AUC, over the whole set."""
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, np.float64)
    pred = (prob >= threshold).astype(int)
    both = len(np.unique(y_true)) == 2
    return {
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "precision": float(skm.precision_score(y_true, pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, pred, zero_division=0)),
        "f1": float(skm.f1_score(y_true, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, prob)) if both else float("nan"),
        "pr_auc": float(skm.average_precision_score(y_true, prob)) if both else float("nan"),
        "n": int(len(y_true)),
    }


def threshold_sweep(y_true: np.ndarray, prob: np.ndarray, n: int) -> list[dict[str, float]]:
    """Precision, recall and F1 at n evenly spaced thresholds in [0, 1]."""
    rows = []
    for t in np.linspace(0.0, 1.0, n):
        m = binary_metrics(y_true, prob, float(t))
        rows.append({"threshold": round(float(t), 6), "precision": m["precision"], "recall": m["recall"],
                     "f1": m["f1"]})
    return rows


def operating_threshold(y_val: np.ndarray, prob_val: np.ndarray, target_precision: float) -> tuple[float, bool]:
    """Lowest threshold whose validation precision reaches the target (and flags something).

    Uses the validation set only. If no threshold reaches the target, the highest-precision one is
    returned with reached=False, so the report can say so instead of pretending.
    """
    precision, recall, thresholds = skm.precision_recall_curve(np.asarray(y_val).astype(int), prob_val)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    ok = np.flatnonzero((precision >= target_precision) & (recall > 0))
    if ok.size:
        return float(thresholds[ok[0]]), True
    best = int(np.argmax(precision))
    return float(thresholds[best]), False


def recall_breakdown(rows: list[dict], prob: np.ndarray, threshold: float) -> dict:
    """Recall of the RS class by distortion kind and by effective displacement (px) bins; ROC AUC and recall by
    photo source (drawn scenes vs real photos of the embedded default: a shear is plain where a photo has
    verticals, so the two must be told apart)."""
    rs = [(r, p) for r, p in zip(rows, prob, strict=False) if r["label"] == 1]
    by_kind, by_mag, by_source = {}, {}, {}
    for source in sorted({r.get("source", "") for r in rows}):
        sel = np.array([r.get("source", "") == source for r in rows])
        labels = np.array([r["label"] for r in rows])[sel]
        if len(np.unique(labels)) == 2:
            m = binary_metrics(labels, np.asarray(prob)[sel], threshold)
            by_source[source or "all"] = {"roc_auc": m["roc_auc"], "recall": m["recall"], "precision": m["precision"],
                                          "n": m["n"]}
    for kind in sorted({r["kind"] for r, _ in rs}):
        hits = [p >= threshold for r, p in rs if r["kind"] == kind]
        by_kind[kind] = {"recall": float(np.mean(hits)), "n": len(hits)}
    for lo, hi in zip(MAGNITUDE_BINS[:-1], MAGNITUDE_BINS[1:], strict=False):
        hits = [p >= threshold for r, p in rs if lo <= r["max_disp_px"] < hi]
        if hits:
            by_mag[f"{lo:g}-{hi:g}px"] = {"recall": float(np.mean(hits)), "n": len(hits)}
    return {"by_kind": by_kind, "by_magnitude": by_mag, "by_source": by_source}


def shear_breakdown(rows: list[dict], estimates: np.ndarray) -> dict:
    """Error of the shear estimate (rsdetect.serve.shear) in px: |estimate| against max_disp_px on RS samples (overall,
    by kind, by shear bin), and the mean |estimate| on their global-shutter twins (true shear 0). An image without
    near-vertical edges (NaN) counts as an estimate of 0 and is counted as unmeasured. For pans, whose shear is
    sideways (direction near 0 or pi), also the share whose sign (which way the lower rows moved) is right."""
    est = np.abs(np.nan_to_num(np.asarray(estimates, np.float64), nan=0.0))
    rs = np.array([r["label"] == 1 for r in rows], bool)
    truth = np.array([float(r["max_disp_px"]) if r["label"] == 1 else 0.0 for r in rows])
    err = np.abs(est - truth)

    def mae(sel: np.ndarray) -> dict:
        return {"mae_px": float(err[sel].mean()), "n": int(sel.sum())}

    kinds = np.array([r["kind"] for r in rows])
    out = {"rs": {**mae(rs), "unmeasured": int(np.isnan(estimates)[rs].sum())} if rs.any() else {"n": 0},
           "by_kind": {k: mae(rs & (kinds == k)) for k in sorted(set(kinds[rs]))},
           "by_magnitude": {f"{lo:g}-{hi:g}px": mae(rs & (truth >= lo) & (truth < hi))
                            for lo, hi in zip(MAGNITUDE_BINS[:-1], MAGNITUDE_BINS[1:], strict=False)
                            if (rs & (truth >= lo) & (truth < hi)).any()},
           "twins": {"mean_abs_px": float(est[~rs].mean()), "n": int((~rs).sum())} if (~rs).any() else {"n": 0}}
    pans = [(np.cos(float(r["direction"])), e) for r, e in zip(rows, estimates, strict=False)
            if r["label"] == 1 and r["kind"] == "pan" and str(r.get("direction", "")) != ""]
    if pans:
        out["pan_direction_accuracy"] = {"accuracy": float(np.mean([np.sign(c) == np.sign(e) for c, e in pans])),
                                         "n": len(pans)}
    return out


def write_predictions(path: str | Path, rows: list[dict], prob: np.ndarray) -> None:
    """Per-sample probabilities as CSV (path, split, label, prob), the hand-over between stages."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "split", "label", "prob"])
    for r, p in zip(rows, prob, strict=False):
        w.writerow([r["path"], r["split"], r["label"], f"{float(p):.6f}"])
    atomic_write_text(path, buf.getvalue())


def read_predictions(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Predictions CSV -> {split: {"label": ..., "prob": ..., "path": ...}} for every split in SPLITS (maybe empty).

    An unknown split is an error, not silently dropped: it would vanish from every metric.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    unknown = sorted({r["split"] for r in rows} - set(SPLITS))
    if unknown:
        raise RsdetectError(f"{path}: unknown split {unknown[0]!r} (known: {', '.join(SPLITS)})")
    out: dict[str, dict] = {}
    for split in SPLITS:
        sel = [r for r in rows if r["split"] == split]
        out[split] = {"label": np.array([int(r["label"]) for r in sel]),
                      "prob": np.array([float(r["prob"]) for r in sel]),
                      "path": [r["path"] for r in sel]}
    return out


def external_metrics(preds: dict[str, np.ndarray], threshold: float, manifest: list[dict] | None) -> dict:
    """Metrics on the external set at the model's validation-chosen threshold (never re-chosen on it), and recall
    by shear bin when its manifest is given (rows matched by path: predictions need not keep manifest order)."""
    out = binary_metrics(preds["label"], preds["prob"], threshold)
    if manifest is not None:
        by_path = {r["path"]: r for r in manifest}
        missing = [p for p in preds["path"] if p not in by_path]
        if missing:
            raise RsdetectError(f"external prediction {missing[0]!r} is not in the external manifest "
                                f"({len(missing)} missing; stale predictions? re-run train and baselines)")
        breakdown = recall_breakdown([by_path[p] for p in preds["path"]], preds["prob"], threshold)
        out["breakdown"] = breakdown["by_magnitude"]
    return out


def curve_rows(y_true: np.ndarray, prob: np.ndarray) -> tuple[list[dict], list[dict]]:
    """ROC and precision-recall curves as lists of points (DVC linear-plot schema)."""
    fpr, tpr, _ = skm.roc_curve(y_true, prob)
    precision, recall, _ = skm.precision_recall_curve(y_true, prob)
    roc = [{"fpr": round(float(a), 6), "tpr": round(float(b), 6)} for a, b in zip(fpr, tpr, strict=False)]
    pr = [{"recall": round(float(a), 6), "precision": round(float(b), 6)}
          for a, b in zip(recall, precision, strict=False)]
    return roc, pr


def write_plots(plot_dir: str | Path, fig_dir: str | Path, models: dict[str, dict], cnn_test: dict, threshold: float,
                sweep: list[dict]) -> None:
    """ROC and PR per model, the CNN's test confusion and threshold sweep: DVC JSON and matplotlib PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir, fig_dir = Path(plot_dir), Path(fig_dir)
    fig_roc, ax_roc = plt.subplots(figsize=(5, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 5))
    for name, test in models.items():
        roc, pr = curve_rows(test["label"], test["prob"])
        write_json(plot_dir / "roc" / f"{name}.json", roc)
        write_json(plot_dir / "pr" / f"{name}.json", pr)
        auc = skm.roc_auc_score(test["label"], test["prob"])
        ax_roc.plot([p["fpr"] for p in roc], [p["tpr"] for p in roc], label=f"{name} (AUC {auc:.3f})")
        ax_pr.plot([p["recall"] for p in pr], [p["precision"] for p in pr], label=name)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)", ylim=(0, 1.02))
    for fig, ax, name in ((fig_roc, ax_roc, "roc"), (fig_pr, ax_pr, "pr")):
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(fig_dir / f"{name}.png", dpi=100)
        plt.close(fig)

    pred = (cnn_test["prob"] >= threshold).astype(int)
    names = {0: "normal", 1: "rolling_shutter"}
    write_json(plot_dir / "confusion.json", [{"actual": names[int(a)], "predicted": names[int(p)]}
                                             for a, p in zip(cnn_test["label"], pred, strict=False)])
    cm = skm.confusion_matrix(cnn_test["label"], pred, labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "RS"], yticklabels=["normal", "RS"],
           xlabel="predicted", ylabel="actual", title=f"CNN test @ {threshold:.3f}")
    fig.tight_layout()
    fig.savefig(fig_dir / "confusion.png", dpi=100)
    plt.close(fig)

    write_json(plot_dir / "threshold.json", sweep)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("precision", "recall", "f1"):
        ax.plot([r["threshold"] for r in sweep], [r[key] for r in sweep], label=key)
    ax.axvline(threshold, color="k", ls=":", label=f"operating {threshold:.3f}")
    ax.set(xlabel="threshold", title="CNN on validation", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / "threshold.png", dpi=100)
    plt.close(fig)


def markdown_report(summary: dict) -> str:
    """A short comparison of the CNN and the baselines at their operating thresholds."""
    lines = ["# rsdetect evaluation", "",
             f"Operating threshold: lowest with validation precision >= {summary['target_precision']} "
             "(chosen on validation only; test untouched).", "",
             "| model | threshold | reached target on val | test ROC AUC | test PR AUC | test precision | test recall "
             "| test F1 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in summary["models"].items():
        t = m["test"]
        lines.append(f"| {name} | {m['threshold']:.3f} | {'yes' if m['target_reached'] else 'no'} | "
                     f"{t['roc_auc']:.3f} | {t['pr_auc']:.3f} | {t['precision']:.3f} | {t['recall']:.3f} | "
                     f"{t['f1']:.3f} |")
    cnn = summary["models"].get("cnn")
    if cnn:
        lines += ["", "CNN test recall by distortion kind: " +
                  ", ".join(f"{k} {v['recall']:.2f} (n={v['n']})" for k, v in cnn["breakdown"]["by_kind"].items()),
                  "", "CNN test recall by effective displacement: " +
                  ", ".join(f"{k} {v['recall']:.2f} (n={v['n']})" for k, v in cnn["breakdown"]["by_magnitude"].items()),
                  "", "CNN test by photo source: " +
                  ", ".join(f"{k} ROC AUC {v['roc_auc']:.3f}, recall {v['recall']:.2f} (n={v['n']})"
                            for k, v in cnn["breakdown"].get("by_source", {}).items())]
    shear = summary.get("shear")
    if shear and shear["rs"]["n"]:
        lines += ["", f"Shear estimate for correction ({shear['method']}), |error| in px across the frame height: "
                  f"RS test images MAE {shear['rs']['mae_px']:.2f} (n={shear['rs']['n']}, {shear['rs']['unmeasured']} "
                  "without near-vertical edges); by kind " +
                  ", ".join(f"{k} {v['mae_px']:.2f}" for k, v in shear["by_kind"].items()) + "; by shear " +
                  ", ".join(f"{k} {v['mae_px']:.2f} (n={v['n']})" for k, v in shear["by_magnitude"].items()) +
                  f"; mean |estimate| on the global-shutter twins {shear['twins']['mean_abs_px']:.2f}" +
                  (f"; pan direction right {shear['pan_direction_accuracy']['accuracy']:.0%}"
                   if "pan_direction_accuracy" in shear else "")]
    external = {name: m["external"] for name, m in summary["models"].items() if "external" in m}
    if external:
        lines += ["", f"## {EXTERNAL_TITLE}", "",
                  "Pairs from our test photos only, made with an independent published recipe (row-quadratic camera "
                  "translation and rotation); each model at its validation-chosen threshold.", "",
                  "| model | external ROC AUC | external PR AUC | external precision | external recall "
                  "| external F1 | n |",
                  "|---|---|---|---|---|---|---|"]
        for name, x in external.items():
            lines.append(f"| {name} | {x['roc_auc']:.3f} | {x['pr_auc']:.3f} | {x['precision']:.3f} | "
                         f"{x['recall']:.3f} | {x['f1']:.3f} | {x['n']} |")
        if "breakdown" in external.get("cnn", {}):
            lines += ["", "CNN external recall by shear: " +
                      ", ".join(f"{k} {v['recall']:.2f} (n={v['n']})" for k, v in external["cnn"]["breakdown"].items())]
    return "\n".join(lines) + "\n"
