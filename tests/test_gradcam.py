"""Grad-CAM on small models whose answer is known: the output responds only to red, so the heatmap's peak must lie
on the red patch (the "distortion"), on the tile that fired, in frame coordinates; the same for a detector that
nests its backbone as the real one does."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from rsdetect.errors import RsdetectError  # noqa: E402
from rsdetect.serve.gradcam import GradCam, overlay  # noqa: E402

S = 32


def red_detector(size: int = S, nested: bool = False) -> keras.Model:
    """p = sigmoid(gain * mean of a pooled 8x8 map of relu(R - B) - bias): only red pixels raise the output.

    nested: the conv part is its own Model inside the detector, followed by a head Model (the real detector's
    shape: image -> MobileNetV3 -> normalization -> head)."""
    inp = keras.Input((size, size, 3), name="image")
    conv = keras.layers.Conv2D(1, 1, use_bias=False, activation="relu", name="r_minus_b")
    pool = keras.layers.AveragePooling2D(4, name="pool")  # the 8 x 8 "last feature map"
    gap = keras.layers.GlobalAveragePooling2D(name="gap")
    dense = keras.layers.Dense(1, activation="sigmoid", name="gain")
    if nested:
        b_in = keras.Input((size, size, 3))
        backbone = keras.Model(b_in, gap(pool(conv(b_in))), name="backbone")
        h_in = keras.Input((1,))
        head = keras.Model(h_in, dense(h_in), name="head")
        model = keras.Model(inp, head(keras.layers.Rescaling(1.0, name="norm")(backbone(inp))))
    else:
        model = keras.Model(inp, dense(gap(pool(conv(inp)))))
    conv.set_weights([np.array([1, 0, -1], np.float32).reshape(1, 1, 3, 1)])
    dense.set_weights([np.array([[0.5]], np.float32), np.array([-2.0], np.float32)])
    return model


def grey_frame(h: int, w: int, patch: tuple[int, int, int, int] | None) -> np.ndarray:
    """A neutral grey RGB frame with noise, and a red patch (x, y, w, h) where the "distortion" is."""
    rng = np.random.default_rng(0)
    frame = np.clip(128 + rng.normal(0, 6, (h, w, 1)), 0, 255).repeat(3, -1).astype(np.uint8)
    if patch:
        x, y, pw, ph = patch
        frame[y:y + ph, x:x + pw] = (230, 40, 40)
    return frame


@pytest.mark.parametrize("nested", [False, True])
def test_peak_lies_on_the_distorted_region_of_a_square_frame(nested) -> None:
    cam = GradCam(red_detector(nested=nested))
    assert cam.layer_name == "pool"
    patch = (20, 4, 8, 8)
    result = cam.frame(grey_frame(S, S, patch), S)
    x, y, w, h = patch
    assert result.tile == (0, 0, S, S)
    assert x <= result.peak[0] < x + w and y <= result.peak[1] < y + h
    # the map is high on the patch and near zero on the grey far from it
    assert result.heat[y:y + h, x:x + w].mean() > 0.5 > 10 * result.heat[S - 8:, :8].mean()


def test_firing_tile_and_frame_coordinates_on_a_wide_frame() -> None:
    """A 96 x 48 frame is scored as 3 tiles of 48 px (at S=32: resized to 64 x 32); the patch sits in the last one."""
    cam = GradCam(red_detector())
    patch = (80, 30, 10, 10)
    result = cam.frame(grey_frame(48, 96, patch), S)
    assert result.tile == (48, 0, 48, 48)  # the tile that fired: the one holding the patch
    assert 80 <= result.peak[0] < 90 and 30 <= result.peak[1] < 40
    assert result.heat[:, :40].max() == 0  # nothing outside the firing tile
    assert result.probability > cam.maps(np.zeros((1, S, S, 3), np.float32))[0][0]


def test_nested_and_flat_give_the_same_map_and_probability() -> None:
    frame = grey_frame(S, S, (2, 18, 6, 6))
    flat, nested = GradCam(red_detector()).frame(frame, S), GradCam(red_detector(nested=True)).frame(frame, S)
    assert flat.probability == pytest.approx(nested.probability, abs=1e-6)
    np.testing.assert_allclose(flat.heat, nested.heat, atol=1e-5)


def test_no_red_gives_a_flat_map_and_no_peak() -> None:
    result = GradCam(red_detector()).frame(grey_frame(S, S, None) * 0 + 100, S)
    assert result.peak is None and result.heat.max() == 0


def test_a_model_without_a_spatial_map_is_refused() -> None:
    inp = keras.Input((S, S, 3))
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inp)))
    with pytest.raises(RsdetectError, match="no spatial feature map"):
        GradCam(model)


def test_overlay_keeps_the_frame_where_the_map_is_cold() -> None:
    frame = grey_frame(S, S, (20, 4, 8, 8))
    result = GradCam(red_detector()).frame(frame, S)
    out = overlay(frame, result)
    assert out.shape == frame.shape and out.dtype == np.uint8
    cold = result.heat == 0
    cold[:2], cold[-2:], cold[:, :2], cold[:, -2:] = False, False, False, False  # the tile outline is drawn there
    cold[:16, 12:] = False  # and the peak's ring
    np.testing.assert_array_equal(out[cold], frame[cold])
