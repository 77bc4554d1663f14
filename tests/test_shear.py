"""The shear estimate (rsdetect.serve.shear): known pans of an image of vertical edges are measured back to within a
pixel or two (within 15% on these hard-edged bars), in frame pixels at any frame size; de-skewing undoes them; the
evaluation breakdown's arithmetic."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from rsdetect.errors import RsdetectError
from rsdetect.evaluation.metrics import shear_breakdown
from rsdetect.serve.shear import deskew, estimate_paths, estimate_shear, shear_direction
from rsdetect.shutter import warp_rows

from conftest import params_group

P = params_group("shear")


def bars(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An RGB image of vertical bars of random widths and shades (a hallway of door frames), with a little noise."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    x = 0
    while x < w:
        bw = int(rng.integers(max(2, w // 40), max(3, w // 10)))
        img[:, x:x + bw] = rng.integers(30, 225, 3)
        x += bw
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def pan(img: np.ndarray, shear: float) -> np.ndarray:
    """The image as a rolling shutter sees a sideways pan: row y shifted by shear * y / (H-1)."""
    h = img.shape[0]
    return warp_rows(img, shear * np.arange(h) / (h - 1), np.zeros(h))


@pytest.mark.parametrize("shear", [-20.0, -6.0, 8.0, 24.0])
def test_a_pan_is_measured_back(shear) -> None:
    est = estimate_shear(pan(bars(160, 160), shear), P)
    assert est == pytest.approx(shear, abs=max(1.5, 0.15 * abs(shear)))  # hard steps: up to 11% over
    assert shear_direction(est) == ("right" if shear > 0 else "left")


def test_a_large_frame_is_measured_at_the_model_scale_in_frame_pixels() -> None:
    frame = pan(bars(480, 640, seed=1), 45.0)  # 45 px across 480 rows
    assert estimate_shear(frame, P, size=160) == pytest.approx(45.0, abs=4.5)
    assert abs(estimate_shear(bars(480, 640, seed=1), P, size=160)) < 2.0


def test_deskew_undoes_the_measured_shear() -> None:
    sheared = pan(bars(160, 160, seed=2), 18.0)
    est = estimate_shear(sheared, P)
    fixed = deskew(sheared, est)
    assert fixed.shape == sheared.shape and fixed.dtype == np.uint8
    assert abs(estimate_shear(fixed, P)) < abs(est) / 6


def test_no_edges_no_estimate() -> None:
    assert estimate_shear(np.full((64, 64, 3), 90, np.uint8), P) is None
    assert shear_direction(None) is None and shear_direction(0.0) is None


def test_estimate_paths_reads_files_and_names_a_bad_one(tmp_path) -> None:
    good, flat, bad = tmp_path / "a.png", tmp_path / "flat.png", tmp_path / "bad.jpg"
    cv2.imwrite(str(good), cv2.cvtColor(pan(bars(64, 64), 6.0), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(flat), np.full((64, 64, 3), 90, np.uint8))
    bad.write_bytes(b"not an image")
    est = estimate_paths([good, flat], P)
    assert est[0] == pytest.approx(6.0, abs=1.0) and np.isnan(est[1])
    with pytest.raises(RsdetectError, match="bad.jpg"):
        estimate_paths([bad], P)


def test_shear_breakdown_arithmetic() -> None:
    rows = [{"label": 1, "kind": "pan", "max_disp_px": 10.0, "direction": "0.1"},
            {"label": 0, "kind": "pan", "max_disp_px": 10.0, "direction": "0.1"},
            {"label": 1, "kind": "pan", "max_disp_px": 20.0, "direction": "3.1"},
            {"label": 0, "kind": "pan", "max_disp_px": 20.0, "direction": "3.1"},
            {"label": 1, "kind": "object", "max_disp_px": 5.0, "direction": "1.0"}]
    est = np.array([8.0, -1.0, 26.0, 0.5, np.nan])  # the second pan moved left, estimated right: wrong sign
    b = shear_breakdown(rows, est)
    assert b["rs"] == {"mae_px": pytest.approx((2 + 6 + 5) / 3), "n": 3, "unmeasured": 1}
    assert b["by_kind"] == {"object": {"mae_px": 5.0, "n": 1}, "pan": {"mae_px": 4.0, "n": 2}}
    assert b["by_magnitude"] == {"4-8px": {"mae_px": 5.0, "n": 1}, "8-16px": {"mae_px": 2.0, "n": 1},
                                 "16-32px": {"mae_px": 6.0, "n": 1}}
    assert b["twins"] == {"mean_abs_px": 0.75, "n": 2}
    assert b["pan_direction_accuracy"] == {"accuracy": 0.5, "n": 2}
