"""rsdetect.evaluation.metrics: whole-set metrics equal sklearn's, the threshold comes from validation only,
breakdowns, the predictions CSV hand-over, the DVC plot files and the report."""
from __future__ import annotations

import csv
import json
import runpy
import shutil
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn import metrics as skm

from rsdetect.errors import RsdetectError
from rsdetect.evaluation.metrics import (
    EXTERNAL_TITLE,
    MAGNITUDE_BINS,
    binary_metrics,
    external_metrics,
    markdown_report,
    operating_threshold,
    read_predictions,
    recall_breakdown,
    threshold_sweep,
    write_plots,
    write_predictions,
)
from rsdetect.synth.manifest import MANIFEST_FIELDS
from rsdetect.synth.rengarajan import EXTERNAL_FIELDS

from conftest import ROOT


def sk_reference(y, prob, t):
    pred = (prob >= t).astype(int)
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred, zero_division=0),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "roc_auc": skm.roc_auc_score(y, prob),
        "pr_auc": skm.average_precision_score(y, prob),
    }


def noisy_predictions(rng, n, sort_by_class=False):
    y = rng.integers(0, 2, n)
    prob = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, n), 0, 1)
    if sort_by_class:
        order = np.argsort(y, kind="stable")
        y, prob = y[order], prob[order]
    return y, prob


@pytest.mark.parametrize("threshold", [0.1, 0.35, 0.5, 0.72, 0.9])
@pytest.mark.parametrize("sort_by_class", [False, True])
def test_binary_metrics_equal_sklearn_over_the_whole_set(threshold, sort_by_class):
    rng = np.random.default_rng(11)
    y, prob = noisy_predictions(rng, 203, sort_by_class)
    got = binary_metrics(y, prob, threshold)
    ref = sk_reference(y, prob, threshold)
    assert got["n"] == 203
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    # a non-trivial set: the metrics are not degenerate
    assert 0.6 < got["roc_auc"] < 0.999 and 0 < (prob >= threshold).sum() < len(prob)


def test_per_batch_averaging_on_a_class_sorted_set_would_be_wrong():
    """The prior attempt averaged per batch of 8 on a class-sorted test set; whole-set metrics do not."""
    rng = np.random.default_rng(5)
    y, prob = noisy_predictions(rng, 100, sort_by_class=True)
    assert (np.diff(y) >= 0).all() and 0 < y.sum() < len(y)
    got = binary_metrics(y, prob, 0.5)
    ref = sk_reference(y, prob, 0.5)
    batches = [slice(i, i + 8) for i in range(0, len(y), 8)]
    per_batch = {
        "accuracy": np.mean([skm.accuracy_score(y[b], prob[b] >= 0.5) for b in batches]),
        "precision": np.mean([skm.precision_score(y[b], prob[b] >= 0.5, zero_division=0) for b in batches]),
        "recall": np.mean([skm.recall_score(y[b], prob[b] >= 0.5, zero_division=0) for b in batches]),
    }
    for k in ("accuracy", "precision", "recall"):
        assert got[k] == pytest.approx(ref[k], abs=1e-12)
    # per-batch averaging would be far off for precision and recall (single-class batches score 0) ...
    assert abs(per_batch["precision"] - ref["precision"]) > 0.2
    assert abs(per_batch["recall"] - ref["recall"]) > 0.2
    # ... and the uneven last batch (100 = 12 * 8 + 4) shifts even accuracy
    assert per_batch["accuracy"] != pytest.approx(ref["accuracy"], abs=1e-9)
    # and ROC AUC is undefined on single-class batches (sklearn raises or warns and gives nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            batch_auc = skm.roc_auc_score(y[batches[0]], prob[batches[0]])
        except ValueError:
            batch_auc = float("nan")
    assert np.isnan(batch_auc) and np.isfinite(got["roc_auc"])


def test_binary_metrics_single_class_gives_nan_aucs():
    m = binary_metrics(np.zeros(5), np.linspace(0, 1, 5), 0.5)
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"])
    assert m["accuracy"] == pytest.approx(2 / 5) and m["precision"] == 0.0


def brute_force_threshold(y, prob, target):
    """Lowest unique probability t with precision(prob >= t) >= target and some true positive."""
    for t in np.unique(prob):
        pred = prob >= t
        tp = int((pred & (y == 1)).sum())
        if tp > 0 and tp / pred.sum() >= target:
            return float(t)
    return None


def test_operating_threshold_is_the_lowest_reaching_target_precision_on_val():
    rng = np.random.default_rng(2)
    for target in (0.6, 0.8, 0.9, 0.95):
        y, prob = noisy_predictions(rng, 150)
        prob = np.round(prob, 2)  # ties on purpose
        t, reached = operating_threshold(y, prob, target)
        expected = brute_force_threshold(y, prob, target)
        assert expected is not None and reached
        assert t == pytest.approx(expected, abs=1e-12)
        pred = prob >= t
        assert skm.precision_score(y, pred) >= target


def test_operating_threshold_depends_on_validation_only():
    # val: positives above 0.6 are clean; test: a different distribution that would pick another threshold
    y_val = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    p_val = np.array([0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9])
    y_test = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 1])
    p_test = np.array([0.1, 0.2, 0.3, 0.4, 0.65, 0.7, 0.75, 0.8, 0.85, 0.95])
    t_val, ok_val = operating_threshold(y_val, p_val, 0.95)
    t_test, _ = operating_threshold(y_test, p_test, 0.95)
    assert ok_val and t_val == pytest.approx(0.6) == brute_force_threshold(y_val, p_val, 0.95)
    assert t_test != pytest.approx(t_val)  # the test set would choose differently
    # the function is pure in its val inputs: same val, anything else changed -> same answer
    assert operating_threshold(y_val.copy(), p_val.copy(), 0.95) == (t_val, True)


def write_test_images(synth: Path, rows: list[dict]) -> None:
    """Small images for the test rows (evaluate measures the shear estimate on them): RS rows get stripes leaning
    by their max_disp_px, twins upright ones."""
    from rsdetect.shutter import warp_rows

    (synth / "images").mkdir(exist_ok=True)
    upright = np.ascontiguousarray(np.broadcast_to((np.arange(48) // 6 % 2 * 150 + 50).astype(np.uint8)[None, :, None],
                                                   (48, 48, 3)))
    for r in rows:
        if r["split"] == "test":
            shear = r["max_disp_px"] if r["label"] else 0.0
            cv2.imwrite(str(synth / r["path"]), warp_rows(upright, shear * np.arange(48) / 47, np.zeros(48)))


def test_evaluate_stage_chooses_threshold_on_val_and_reports_test_at_it(tmp_path, monkeypatch):
    """The stage script feeds operating_threshold the val rows, never the test rows."""
    synth, models, base = tmp_path / "synth", tmp_path / "models", tmp_path / "baselines"
    synth.mkdir()
    base.mkdir()
    y_val = [0, 0, 0, 0, 1, 0, 1, 1, 1, 1]
    p_val = [0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9]
    y_test = [0, 1, 0, 1, 0, 1, 0, 1, 1, 1]
    p_test = [0.1, 0.2, 0.3, 0.4, 0.65, 0.7, 0.75, 0.8, 0.85, 0.95]
    rows = [{"path": f"images/{s}{i}.jpg", "split": s, "label": lab, "kind": "object" if lab else "none",
             "max_disp_px": 5.0 if lab else 0.0, "image_id": 100 * j + i // 2}
            for j, (s, ys) in enumerate((("train", [0, 1]), ("val", y_val), ("test", y_test)))
            for i, lab in enumerate(ys)]
    with open(synth / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    prob = np.array([0.3, 0.7] + p_val + p_test)
    write_test_images(synth, rows)
    write_predictions(models / "predictions.csv", rows, prob)
    write_predictions(base / "lr_pixels.csv", rows, 1 - prob)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "synth", "models", "baselines", "metrics/evaluate.json",
                                      "metrics/plots", "metrics/figures", "metrics/report.md"])
    runpy.run_path(str(ROOT / "src" / "evaluate.py"), run_name="__main__")
    summary = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    cnn = summary["models"]["cnn"]
    expected, reached = operating_threshold(np.array(y_val), np.array(p_val), 0.95)
    assert cnn["threshold"] == pytest.approx(expected) == pytest.approx(0.6) and cnn["target_reached"] == reached
    assert cnn["threshold"] != pytest.approx(operating_threshold(np.array(y_test), np.array(p_test), 0.95)[0])
    assert cnn["test"] == pytest.approx(binary_metrics(np.array(y_test), np.array(p_test), expected), nan_ok=True)
    assert set(summary["models"]) == {"cnn", "lr_pixels"}
    report = (tmp_path / "metrics" / "report.md").read_text()
    assert "| lr_pixels |" in report
    shear = summary["shear"]  # 6 RS test images leaning 5 px, 4 upright twins
    assert shear["rs"]["n"] == 6 and shear["by_kind"]["object"]["n"] == 6 and shear["twins"]["n"] == 4
    assert shear["rs"]["mae_px"] < 1.5 and shear["twins"]["mean_abs_px"] < 1.0
    assert "Shear estimate for correction" in report


def test_operating_threshold_unreachable_target_returns_best_precision_and_flags_it():
    # every threshold admits a negative at the top: precision can never reach 0.95
    y = np.array([1, 0, 1, 0, 1, 1, 0])
    p = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9])
    t, reached = operating_threshold(y, p, 0.95)
    assert reached is False
    assert brute_force_threshold(y, p, 0.95) is None
    precisions = {float(u): skm.precision_score(y, p >= u, zero_division=0) for u in np.unique(p)}
    best = max(precisions.values())
    assert precisions[t] == pytest.approx(best)
    assert t == min(u for u, v in precisions.items() if v == best)


def test_threshold_sweep_shapes_and_monotonic_recall():
    rng = np.random.default_rng(8)
    y, prob = noisy_predictions(rng, 80)
    sweep = threshold_sweep(y, prob, 21)
    assert len(sweep) == 21
    assert [r["threshold"] for r in sweep] == pytest.approx(np.linspace(0, 1, 21))
    assert all(set(r) == {"threshold", "precision", "recall", "f1"} for r in sweep)
    recall = [r["recall"] for r in sweep]
    assert all(a >= b for a, b in zip(recall, recall[1:], strict=False))
    assert recall[0] == 1.0
    mid = sweep[10]
    assert mid["precision"] == pytest.approx(skm.precision_score(y, prob >= 0.5))
    assert mid["f1"] == pytest.approx(skm.f1_score(y, prob >= 0.5))


def test_recall_breakdown_by_kind_and_magnitude():
    rows = [
        {"label": 1, "kind": "object", "max_disp_px": 3.0},
        {"label": 1, "kind": "object", "max_disp_px": 5.0},
        {"label": 1, "kind": "pan", "max_disp_px": 10.0},
        {"label": 1, "kind": "pan", "max_disp_px": 40.0},
        {"label": 1, "kind": "vibration", "max_disp_px": 4.0},
        {"label": 0, "kind": "none", "max_disp_px": 0.0},
        {"label": 0, "kind": "none", "max_disp_px": 0.0},
    ]
    prob = np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.99, 0.0])
    out = recall_breakdown(rows, prob, 0.5)
    assert out["by_kind"] == {"object": {"recall": 0.5, "n": 2}, "pan": {"recall": 1.0, "n": 2},
                              "vibration": {"recall": 0.0, "n": 1}}
    assert "none" not in out["by_kind"]  # controls are not counted as a kind of RS
    assert out["by_magnitude"] == {"0-4px": {"recall": 1.0, "n": 1}, "4-8px": {"recall": 0.0, "n": 2},
                                   "8-16px": {"recall": 1.0, "n": 1}, "32-infpx": {"recall": 1.0, "n": 1}}
    assert MAGNITUDE_BINS[0] == 0 and MAGNITUDE_BINS[-1] == float("inf")


def test_predictions_round_trip(tmp_path):
    splits = ["train", "val", "test", "test", "val", "train", "test"]
    rows = [{"path": f"images/{i}.jpg", "split": s, "label": i % 2} for i, s in enumerate(splits)]
    prob = np.array([0.1234567, 0.5, 0.99, 0.0, 1.0, 0.333333, 0.75])
    path = tmp_path / "sub" / "pred.csv"
    write_predictions(path, rows, prob)
    back = read_predictions(path)
    assert set(back) == {"train", "val", "test", "external"} and len(back["external"]["label"]) == 0
    assert back["test"]["path"] == ["images/2.jpg", "images/3.jpg", "images/6.jpg"]
    assert back["test"]["label"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(back["test"]["prob"], [0.99, 0.0, 0.75])
    np.testing.assert_allclose(back["train"]["prob"], [0.123457, 0.333333], atol=1e-6)
    assert back["val"]["label"].tolist() == [1, 0]


def test_write_plots_writes_dvc_json_and_pngs(tmp_path):
    rng = np.random.default_rng(3)
    y, prob = noisy_predictions(rng, 40)
    models = {"cnn": {"label": y, "prob": prob}, "lr_pixels": {"label": y, "prob": rng.random(40)}}
    plot_dir, fig_dir = tmp_path / "plots", tmp_path / "figs"
    fig_dir.mkdir()
    sweep = threshold_sweep(y, prob, 11)
    write_plots(plot_dir, fig_dir, models, models["cnn"], 0.5, sweep)
    for name in models:
        roc = json.loads((plot_dir / "roc" / f"{name}.json").read_text())
        pr = json.loads((plot_dir / "pr" / f"{name}.json").read_text())
        assert roc and all(set(p) == {"fpr", "tpr"} for p in roc)
        assert pr and all(set(p) == {"precision", "recall"} for p in pr)
        assert roc[0] == {"fpr": 0.0, "tpr": 0.0} and roc[-1] == {"fpr": 1.0, "tpr": 1.0}
        fpr, tpr, _ = skm.roc_curve(models[name]["label"], models[name]["prob"])
        assert len(roc) == len(fpr)
    confusion = json.loads((plot_dir / "confusion.json").read_text())
    assert len(confusion) == 40 and all(set(c) == {"actual", "predicted"} for c in confusion)
    tp = sum(c["actual"] == c["predicted"] == "rolling_shutter" for c in confusion)
    assert tp == int(((prob >= 0.5) & (y == 1)).sum())
    assert json.loads((plot_dir / "threshold.json").read_text()) == sweep
    for png in ("roc.png", "pr.png", "confusion.png", "threshold.png"):
        data = (fig_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_markdown_report_has_a_row_per_model():
    test = {"roc_auc": 0.91, "pr_auc": 0.88, "precision": 0.95, "recall": 0.6, "f1": 0.73}
    summary = {"target_precision": 0.95, "models": {
        "cnn": {"threshold": 0.62, "target_reached": True, "test": test,
                "breakdown": {"by_kind": {"pan": {"recall": 0.75, "n": 4}},
                              "by_magnitude": {"4-8px": {"recall": 0.5, "n": 2}}}},
        "lr_pixels": {"threshold": 0.4, "target_reached": False, "test": {**test, "roc_auc": 0.51}},
        "rf_features": {"threshold": 0.55, "target_reached": True, "test": test},
    }}
    md = markdown_report(summary)
    assert md.startswith("# rsdetect evaluation")
    assert "| cnn | 0.620 | yes | 0.910 | 0.880 | 0.950 | 0.600 | 0.730 |" in md
    assert "| lr_pixels | 0.400 | no | 0.510 |" in md
    assert "| rf_features | 0.550 | yes |" in md
    assert "pan 0.75 (n=4)" in md and "4-8px 0.50 (n=2)" in md


def test_read_predictions_keeps_external_rows_apart_and_rejects_unknown_splits(tmp_path):
    rows = [{"path": f"images/{i}.jpg", "split": s, "label": i % 2}
            for i, s in enumerate(["val", "external", "test", "external"])]
    write_predictions(tmp_path / "p.csv", rows, np.array([0.1, 0.8, 0.3, 0.4]))
    back = read_predictions(tmp_path / "p.csv")
    assert back["external"]["path"] == ["images/1.jpg", "images/3.jpg"] and back["external"]["label"].tolist() == [1, 1]
    assert back["test"]["path"] == ["images/2.jpg"]  # external rows never leak into test
    write_predictions(tmp_path / "q.csv", [{"path": "a.jpg", "split": "holdout", "label": 1}], np.array([0.5]))
    with pytest.raises(RsdetectError, match="unknown split 'holdout'"):
        read_predictions(tmp_path / "q.csv")


def write_stage_inputs(tmp_path, external: bool) -> tuple[list, dict]:
    """Synth manifest, CNN and one baseline's predictions (with or without external rows), the external manifest."""
    synth, models, base, ext = (tmp_path / d for d in ("synth", "models", "baselines", "external"))
    for d in (synth, base, ext):
        d.mkdir()
    rng = np.random.default_rng(4)
    y_val, p_val = noisy_predictions(rng, 60)
    y_test, p_test = noisy_predictions(rng, 60)
    rows = [{"path": f"images/{s}{i}.jpg", "split": s, "label": int(lab), "kind": "pan" if lab else "none",
             "max_disp_px": 5.0 if lab else 0.0, "image_id": 100 * j + i // 2}
            for j, (s, ys) in enumerate((("val", y_val), ("test", y_test))) for i, lab in enumerate(ys)]
    with open(synth / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    write_test_images(synth, rows)
    # the external set: pairs with shears in several bins; manifest in pair order, predictions in another order
    shear = rng.uniform(1, 60, 40)
    ext_rows = [{"path": f"images/{k:012d}_0_{tag}.jpg", "split": "external", "label": lab, "pair_id": f"{k:012d}_0",
                 "image_id": k, "kind": "rengarajan", "max_disp_px": round(float(shear[k]), 3)}
                for k in range(40) for lab, tag in ((1, "rs"), (0, "gs"))]
    with open(ext / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=EXTERNAL_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(ext_rows)
    # a detector that sees large shears better: the breakdown by shear bin must follow the right rows
    p_ext = np.array([np.clip(0.2 + r["label"] * r["max_disp_px"] / 60 + 0.1 * rng.random(), 0, 1) for r in ext_rows])
    order = rng.permutation(len(ext_rows))
    pred_rows = rows + ([ext_rows[i] for i in order] if external else [])
    prob = np.concatenate([p_val, p_test, p_ext[order] if external else []])
    write_predictions(models / "predictions.csv", pred_rows, prob)
    write_predictions(base / "lr_pixels.csv", pred_rows, 1 - prob)
    return ext_rows, {"y_val": y_val, "p_val": p_val, "p_ext": p_ext}


def run_evaluate_stage(tmp_path, monkeypatch) -> dict:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "synth", "models", "baselines", "metrics/evaluate.json",
                                      "metrics/plots", "metrics/figures", "metrics/report.md", "external/manifest.csv"])
    runpy.run_path(str(ROOT / "src" / "evaluate.py"), run_name="__main__")
    return json.loads((tmp_path / "metrics" / "evaluate.json").read_text())


def test_evaluate_stage_reports_external_block_at_the_validation_threshold(tmp_path, monkeypatch):
    ext_rows, data = write_stage_inputs(tmp_path, external=True)
    summary = run_evaluate_stage(tmp_path, monkeypatch)
    y_ext = np.array([r["label"] for r in ext_rows])
    for name, prob in (("cnn", data["p_ext"]), ("lr_pixels", 1 - np.round(data["p_ext"], 6))):
        m = summary["models"][name]
        threshold = m["threshold"]
        p_val = data["p_val"] if name == "cnn" else 1 - np.round(data["p_val"], 6)
        assert threshold == pytest.approx(operating_threshold(data["y_val"], np.round(p_val, 6), 0.95)[0])
        x = m["external"]
        expected = binary_metrics(y_ext, np.round(prob, 6), threshold)
        assert {k: x[k] for k in expected} == pytest.approx(expected)
        assert x["roc_auc"] == pytest.approx(skm.roc_auc_score(y_ext, np.round(prob, 6))) and x["n"] == 80
    # recall by shear bin, matched by path although the predictions are in another order than the manifest
    threshold = summary["models"]["cnn"]["threshold"]
    rs = [(r, p) for r, p in zip(ext_rows, data["p_ext"], strict=False) if r["label"] == 1]
    for lo, hi in ((0, 4), (4, 8), (8, 16), (16, 32), (32, float("inf"))):
        hits = [np.round(p, 6) >= threshold for r, p in rs if lo <= r["max_disp_px"] < hi]
        if hits:
            assert summary["models"]["cnn"]["external"]["breakdown"][f"{lo:g}-{hi:g}px"] == {
                "recall": pytest.approx(np.mean(hits)), "n": len(hits)}
    assert sum(v["n"] for v in summary["models"]["cnn"]["external"]["breakdown"].values()) == 40
    # external rows change nothing on the internal test set
    assert summary["models"]["cnn"]["test"]["n"] == 60
    report = (tmp_path / "metrics" / "report.md").read_text()
    assert EXTERNAL_TITLE in report and "| cnn | " in report.split(EXTERNAL_TITLE)[1]
    assert "CNN external recall by shear:" in report


def test_evaluate_stage_without_external_rows_has_no_external_block(tmp_path, monkeypatch):
    write_stage_inputs(tmp_path, external=False)
    summary = run_evaluate_stage(tmp_path, monkeypatch)
    assert all("external" not in m for m in summary["models"].values())
    assert summary["models"]["cnn"]["test"]["n"] == 60
    assert EXTERNAL_TITLE not in (tmp_path / "metrics" / "report.md").read_text()


def test_external_metrics_reject_predictions_missing_from_the_manifest():
    preds = {"label": np.array([1, 0]), "prob": np.array([0.9, 0.1]), "path": ["images/a_rs.jpg", "images/b_gs.jpg"]}
    manifest = [{"path": "images/a_rs.jpg", "label": 1, "kind": "rengarajan", "max_disp_px": 12.0}]
    with pytest.raises(RsdetectError, match="images/b_gs.jpg"):
        external_metrics(preds, 0.5, manifest)
    assert "breakdown" not in external_metrics(preds, 0.5, None)  # without a manifest: the metrics only
