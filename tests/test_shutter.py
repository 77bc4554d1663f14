import cv2
import numpy as np

from rsdetect.shutter import Motion, global_rows, rolling_rows, shear_extent, warp_rows


def vertical_line_image(h=120, w=160, x=60) -> np.ndarray:
    img = np.zeros((h, w), np.float32)
    img[:, x] = 255
    return img


def line_positions(img: np.ndarray) -> np.ndarray:
    """Sub-pixel x position of the bright line in each row (intensity centroid)."""
    xs = np.arange(img.shape[1])
    return (img * xs).sum(1) / img.sum(1)


def test_rolling_shutter_slants_a_vertical_line_by_speed_times_readout():
    h, speed, readout = 120, 30.0, 0.8
    motion = Motion("pan", speed=speed, direction=0.0)
    dx, dy = rolling_rows(motion, h, readout)
    out = warp_rows(vertical_line_image(h), dx, dy)
    pos = line_positions(out[2:-2])
    slope = np.polyfit(np.arange(2, h - 2), pos, 1)[0]
    assert np.isclose(slope, speed * readout / (h - 1), rtol=0.02)  # px per row
    assert np.isclose(shear_extent(dx, dy), speed * readout, rtol=1e-6)


def test_global_shutter_keeps_the_line_vertical():
    motion = Motion("pan", speed=30.0, direction=0.0)
    dx, dy = global_rows(motion, 120, t_star=0.5)
    pos = line_positions(warp_rows(vertical_line_image(), dx, dy))
    assert np.ptp(pos) < 1e-3 and np.isclose(pos.mean(), 75.0, atol=0.05)
    assert shear_extent(dx, dy) == 0.0


def test_zero_readout_is_exactly_the_global_twin():
    img = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    for motion in (Motion("object", speed=20, direction=1.0, turn=8), Motion("pan", speed=12),
                   Motion("vibration", amplitude=4, cycles=2, phase=0.7, direction=0.3)):
        rs = warp_rows(img, *rolling_rows(motion, 64, readout=0.0))
        gs = warp_rows(img, *global_rows(motion, 64, t_star=0.0))
        assert np.array_equal(rs, gs)


def test_turning_object_gives_a_curved_skew():
    motion = Motion("object", speed=0.0, direction=0.0, turn=40.0)
    dx, dy = rolling_rows(motion, 100, readout=1.0)
    # quadratic in row time: the second difference is constant and non-zero
    assert np.allclose(np.diff(dy, 2), np.diff(dy, 2)[0]) and abs(np.diff(dy, 2)[0]) > 0


def test_vibration_wobbles_rows_sinusoidally():
    motion = Motion("vibration", amplitude=5.0, cycles=2.0, phase=0.0, direction=0.0)
    dx, _ = rolling_rows(motion, 200, readout=1.0)
    assert np.isclose(dx.max(), 5.0, atol=0.05) and np.isclose(dx.min(), -5.0, atol=0.05)
    assert (np.diff(np.sign(dx[1:-1])) != 0).sum() >= 3  # several zero crossings


def test_warp_of_a_box_is_the_crop_of_the_full_warp():
    img = (np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8)
    dx, dy = rolling_rows(Motion("object", speed=15, direction=0.4, turn=6), 50, readout=1.0)
    full = warp_rows(img, dx, dy, border=cv2.BORDER_REPLICATE)
    part = warp_rows(img, dx, dy, border=cv2.BORDER_REPLICATE, box=(9, 13, 30, 21))
    assert np.array_equal(part, full[13:34, 9:39])
