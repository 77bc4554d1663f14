"""rsdetect.evaluation.baseline_models: downsampled-pixel features, LR / RF fit-predict, a shuffled-label run at
chance, and the
baselines stage script (lr_lines among its outputs)."""
from __future__ import annotations

import json
import runpy
import shutil
import sys

import cv2
import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from rsdetect.datasets.drawn import make_sample_dataset
from rsdetect.evaluation.baseline_models import fit_predict, logistic_regression, pixel_features, random_forest
from rsdetect.evaluation.metrics import read_predictions
from rsdetect.io import read_yaml
from rsdetect.synth.manifest import read_manifest
from rsdetect.synth.twins import synthesize

from conftest import ROOT, params_group


def test_pixel_features_shape_range_and_values(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    colour = rng.integers(0, 256, (48, 64, 3), np.uint8)  # non-square colour
    gray = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1))  # grayscale ramp
    white = np.full((30, 30, 3), 255, np.uint8)
    black = np.zeros((20, 50, 3), np.uint8)
    for i, img in enumerate((colour, gray, white, black)):
        p = tmp_path / f"{i}.jpg"
        assert cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(p)
    x = pixel_features(paths, 8)
    assert x.shape == (4, 64) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert x[2] == pytest.approx(np.ones(64), abs=2 / 255)  # white -> 1
    assert x[3] == pytest.approx(np.zeros(64), abs=2 / 255)  # black -> 0
    ramp = x[1].reshape(8, 8)
    assert (np.diff(ramp, axis=1) > 0).all()  # left-to-right ramp kept, rows alike
    assert np.ptp(ramp, axis=0).max() < 0.03
    ref = cv2.resize(cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE), (8, 8), interpolation=cv2.INTER_AREA) / 255.0
    np.testing.assert_allclose(x[0], ref.reshape(-1), atol=1e-6)
    assert pixel_features([], 8).shape == (0, 64)


def separable(seed, n=200, d=20):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, d))
    x[:, :3] += 1.5 * (2 * y[:, None] - 1)
    return x, y


@pytest.mark.parametrize("make", [lambda: logistic_regression(1.0, 0), lambda: random_forest(50, 6, 0)],
                         ids=["lr", "rf"])
def test_fit_predict_separable_data(make):
    x, y = separable(1)
    tr = np.arange(len(y)) < 140
    prob = fit_predict(make(), x[tr], y[tr], x)
    assert prob.shape == (len(y),) and ((prob >= 0) & (prob <= 1)).all()
    assert roc_auc_score(y[~tr], prob[~tr]) > 0.9


def test_random_forest_is_deterministic_for_a_seed():
    x, y = separable(2)
    a = fit_predict(random_forest(30, 5, 7), x[:150], y[:150], x)
    b = fit_predict(random_forest(30, 5, 7), x[:150], y[:150], x)
    c = fit_predict(random_forest(30, 5, 8), x[:150], y[:150], x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # the seed matters, so equality above is not trivial
    assert random_forest(30, 5, 7).n_jobs == 1


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline_synth")
    make_sample_dataset(root / "sample", seed=3, n_images=200, width=160, height=120)
    synthesize(root / "sample" / "instances.json", root / "s", 5,
               params_group("synthesize", size=64, min_person_area=50, workers=1, pairs_per_photo=1))
    return root / "s"


@pytest.fixture(scope="module")
def synth_dataset(synth_dir):
    rows = read_manifest(synth_dir / "manifest.csv")
    x = pixel_features([synth_dir / r["path"] for r in rows], 16)
    y = np.array([r["label"] for r in rows])
    split = np.array([r["split"] for r in rows])
    return x, y, split


def test_shuffled_labels_score_at_chance(synth_dataset):
    """Train labels shuffled: nothing in the pixels, file order or pairing may leak the label."""
    x, y, split = synth_dataset
    tr, held = split == "train", split != "train"
    assert tr.sum() >= 200 and held.sum() >= 60 and 0 < y[held].mean() < 1
    rng = np.random.default_rng(1234)
    aucs = []
    for _ in range(5):
        y_shuffled = rng.permutation(y[tr])
        prob = fit_predict(logistic_regression(1.0, 0), x[tr], y_shuffled, x)
        aucs.append(roc_auc_score(y[held], prob[held]))
    assert all(abs(a - 0.5) < 0.15 for a in aucs), aucs
    assert abs(np.mean(aucs) - 0.5) < 0.07, aucs


def test_true_labels_fit_the_training_set(synth_dataset):
    """Positive control for the chance test: the same model and features do learn the real train labels."""
    x, y, split = synth_dataset
    tr = split == "train"
    prob = fit_predict(logistic_regression(1.0, 0), x[tr], y[tr], x)
    assert roc_auc_score(y[tr], prob[tr]) > 0.9


def test_baselines_stage_writes_every_model_including_lr_lines(synth_dir, tmp_path, monkeypatch):
    """The stage script: one predictions CSV per model (lines with LR only) and val/test metrics for each."""
    rows = read_manifest(synth_dir / "manifest.csv")
    (tmp_path / "features").mkdir()
    np.savez(tmp_path / "features" / "features.npz",
             features=np.random.default_rng(0).normal(size=(len(rows), 8)).astype(np.float32))
    # A small external set: four of the test images under another folder, as the external stage lays them out.
    ext = tmp_path / "external"
    (ext / "images").mkdir(parents=True)
    picked = [r for r in rows if r["split"] == "test"][:4]
    lines_csv = ["path,label,split,pair_id,image_id,kind,max_disp_px"]
    for i, r in enumerate(picked):
        shutil.copyfile(synth_dir / r["path"], ext / "images" / f"{i}.jpg")
        lines_csv.append(f"images/{i}.jpg,{r['label']},external,{i},{r['image_id']},rengarajan,{r['max_disp_px']}")
    (ext / "manifest.csv").write_text("\n".join(lines_csv) + "\n")
    np.savez(tmp_path / "features" / "external.npz",
             features=np.random.default_rng(1).normal(size=(len(picked), 8)).astype(np.float32))
    params = read_yaml(ROOT / "params.yaml", "params file", RuntimeError)
    params["baselines"]["rf_trees"] = 5  # speed only; the forest itself is tested above
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["baselines.py", str(synth_dir), "external", "features", "out", "baselines.json"])
    runpy.run_path(str(ROOT / "src" / "baselines.py"), run_name="__main__")
    names = {"lr_pixels", "rf_pixels", "lr_features", "rf_features", "lr_lines"}
    assert {p.stem for p in (tmp_path / "out").glob("*.csv")} == names
    metrics = json.loads((tmp_path / "baselines.json").read_text())
    assert set(metrics) == names and all(set(m) == {"val", "test", "external"} for m in metrics.values())
    lines = read_predictions(tmp_path / "out" / "lr_lines.csv")
    assert sum(len(v["label"]) for v in lines.values()) == len(rows) + len(picked)
    assert len(lines["external"]["label"]) == len(picked)
    assert all(((v["prob"] >= 0) & (v["prob"] <= 1)).all() for v in lines.values())
