"""rsdetect.evaluation.lines: tilt of near-vertical segments measures a rolling-shutter shear, on bar images made
here."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rsdetect.errors import RsdetectError
from rsdetect.evaluation.baseline_models import fit_predict, logistic_regression
from rsdetect.evaluation.lines import feature_names, line_features, line_features_of_paths
from rsdetect.shutter import Motion, rolling_rows, warp_rows

from conftest import params_group

SIZE = 160
MARGIN = 40  # bars are drawn wider than the crop so the warp's reflected border never reaches it
P = params_group("baselines.lines")
NAMES = feature_names(P)


def feat(f: np.ndarray, name: str) -> float:
    return float(f[NAMES.index(name)])


def bars(rng: np.random.Generator) -> np.ndarray:
    """Vertical bars of random widths, gaps and grey levels on a grey ground, plus a little noise."""
    width = SIZE + 2 * MARGIN
    row = np.full(width, 128.0)
    x = 0
    while x < width:
        w = int(rng.integers(4, 16))
        row[x:x + w] = rng.uniform(30, 230)
        x += w + int(rng.integers(3, 14))
    img = np.tile(row, (SIZE, 1)) + rng.normal(0, 2, (SIZE, width))
    return np.clip(img, 0, 255).astype(np.uint8)


def warped(img: np.ndarray, motion: Motion, readout: float = 1.0) -> np.ndarray:
    """The rolling-shutter image of `img` under `motion`, cropped to SIZE x SIZE."""
    dx, dy = rolling_rows(motion, SIZE, readout)
    return np.ascontiguousarray(warp_rows(img, dx, dy)[:, MARGIN:MARGIN + SIZE])


def test_layout_and_detector_available():
    assert hasattr(cv2, "createLineSegmentDetector")  # the module's detector choice relies on it
    f = line_features(bars(np.random.default_rng(0))[:, MARGIN:MARGIN + SIZE], P)
    assert f.shape == (len(NAMES),) and len(set(NAMES)) == len(NAMES)
    assert f.shape == line_features(np.full((SIZE, SIZE), 90, np.uint8), P).shape
    wider = params_group("baselines.lines", tilt_bins=12, bands=4)
    assert line_features(bars(np.random.default_rng(0)), wider).shape == (len(feature_names(wider)),)


def test_vertical_bars_have_zero_tilt():
    f = line_features(bars(np.random.default_rng(1))[:, MARGIN:MARGIN + SIZE], P)
    assert feat(f, "count") >= 10
    assert abs(feat(f, "mean_tilt")) < 0.2 and feat(f, "mean_abs_tilt") < 0.3
    assert feat(f, "tilted_frac") < 0.05


@pytest.mark.parametrize("shear", [8.0, -16.0, 30.0])
def test_pan_shear_gives_its_tilt(shear):
    """A pan of `shear` px over the readout leans every vertical edge by atan(shear / (H - 1)), signed."""
    img = bars(np.random.default_rng(2))
    motion = Motion("pan", speed=abs(shear), direction=0.0 if shear > 0 else math.pi)
    f = line_features(warped(img, motion), P)
    expected = math.degrees(math.atan(shear / (SIZE - 1)))
    assert feat(f, "count") >= 10
    assert feat(f, "mean_tilt") == pytest.approx(expected, abs=0.15 + 0.03 * abs(expected))
    assert feat(f, "std_tilt") < 0.5  # one consistent lean
    assert feat(f, "tilted_frac") > 0.9
    for b in range(P.bands):
        assert feat(f, f"band{b}_mean_tilt") == pytest.approx(expected, abs=0.5)


def test_vibration_changes_tilt_with_the_row_and_a_pan_does_not():
    img = bars(np.random.default_rng(3))
    pan = line_features(warped(img, Motion("pan", speed=10.0)), P)
    wobble = line_features(warped(img, Motion("vibration", amplitude=5.0, cycles=1.0)), P)
    diffs = [n for n in NAMES if n.startswith("band_diff") or n.startswith("band_curv")]
    assert sum(feat(pan, n) for n in diffs) < 0.5
    assert sum(feat(wobble, n) for n in diffs) > 10 * max(sum(feat(pan, n) for n in diffs), 0.1)
    assert feat(wobble, "std_tilt") > 5 * feat(pan, "std_tilt")
    assert feat(wobble, "curve_mean_abs") > 2 * feat(pan, "curve_mean_abs")


def test_flat_image_gives_count_zero_and_no_nan():
    for img in (np.full((SIZE, SIZE), 77, np.uint8), np.zeros((SIZE, SIZE), np.uint8)):
        f = line_features(img, P)
        assert feat(f, "count") == 0 and np.isfinite(f).all() and not f.any()
    horizontal = np.zeros((SIZE, SIZE), np.uint8)
    horizontal[60:100] = 200  # edges, but horizontal: none kept
    assert feat(line_features(horizontal, P), "count") == 0


def test_features_are_deterministic():
    img = warped(bars(np.random.default_rng(4)), Motion("vibration", amplitude=4.0, cycles=2.0))
    np.testing.assert_array_equal(line_features(img, P), line_features(img.copy(), P))


def bar_dataset(n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of n_pairs sheared (pan 8-32 px, either direction, readout 0.5-1) / unsheared bar images."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for _ in range(n_pairs):
        img = bars(rng)
        motion = Motion("pan", speed=float(rng.uniform(8, 32)), direction=float(rng.choice([0.0, math.pi])))
        x.append(line_features(warped(img, motion, float(rng.uniform(0.5, 1.0))), P))
        y.append(1)
        x.append(line_features(img[:, MARGIN:MARGIN + SIZE], P))
        y.append(0)
    return np.array(x), np.array(y)


def test_logistic_regression_separates_sheared_bars_and_not_shuffled_labels():
    x_tr, y_tr = bar_dataset(20, 10)
    x_te, y_te = bar_dataset(10, 11)
    prob = fit_predict(logistic_regression(1.0, 0), x_tr, y_tr, x_te)
    assert roc_auc_score(y_te, prob) > 0.9
    rng = np.random.default_rng(5)
    aucs = [roc_auc_score(y_te, fit_predict(logistic_regression(1.0, 0), x_tr, rng.permutation(y_tr), x_te))
            for _ in range(20)]
    # One shuffle of 40 labels can line up with the shear by chance (AUC near 0 or 1); their mean cannot.
    assert abs(np.mean(aucs) - 0.5) < 0.15, aucs


def test_features_of_paths_reads_grayscale_and_names_an_unreadable_file(tmp_path):
    img = warped(bars(np.random.default_rng(6)), Motion("pan", speed=20.0))
    good = tmp_path / "good.png"
    assert cv2.imwrite(str(good), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    x = line_features_of_paths([good], P)
    np.testing.assert_allclose(x[0], line_features(img, P))
    assert line_features_of_paths([], P).shape == (0, len(NAMES))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    for path in (bad, tmp_path / "missing.png"):
        with pytest.raises(RsdetectError) as err:
            line_features_of_paths([good, path], P)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
