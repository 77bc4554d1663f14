"""Grad-CAM (Selvaraju et al. 2017): where in a frame the model saw the distortion it flagged.

The class-activation map of the last spatial feature map (for the rsdetect detector: the backbone's last conv
activation, 5 x 5 at 160 px) for the sigmoid output: each channel weighted by the mean gradient of the output
with respect to it (tf.GradientTape), summed, ReLU'd and scaled to [0, 1]. It is computed on the frame's tiles
(preprocess.to_tiles, the tiles `scan` scores) and kept for the tile with the highest probability, the one that
fired, placed back into frame coordinates (zero elsewhere).

The gradient is that of the probability, not the logit: d p = p (1 - p) d z is a positive factor per tile that
the [0, 1] scaling removes; only a tile whose float32 probability is exactly 1 (logit above ~17) has no
gradient, and its map is flat (peak None).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.preprocess import Box, to_tiles

CHAIN_TOLERANCE = 1e-4  # the rebuilt forward pass must give the model's own probability (float32 noise ~1e-7)


@dataclass(frozen=True)
class FrameCam:
    """A frame's Grad-CAM: the firing tile's probability and box, the map in frame pixels, and its peak (x, y)."""

    probability: float
    tile: Box
    heat: np.ndarray  # float32 (H, W) in [0, 1], zero outside the tile
    peak: tuple[int, int] | None  # None when the map is flat (no gradient)


def _is_spatial(layer: Any) -> bool:
    shape = getattr(layer, "output", None)
    shape = getattr(shape, "shape", None)
    return shape is not None and len(shape) == 4 and (shape[1] or 2) > 1 and (shape[2] or 2) > 1


def _last_spatial(model: Any) -> tuple[Any, Any]:
    """(top-level layer holding it, the last layer with a spatial (N, h, w, c) output, h and w > 1), searched from
    the output back, one nested model deep (the detector nests its backbone)."""
    import keras

    for top in reversed(model.layers):
        if isinstance(top, keras.Model):
            inner = next((layer for layer in reversed(top.layers) if _is_spatial(layer)), None)
            if inner is not None:
                return top, inner
        elif _is_spatial(top) and not isinstance(top, keras.layers.InputLayer):
            return top, top
    raise RsdetectError(f"{model.name}: no spatial feature map (N, h, w, c) for Grad-CAM")


class GradCam:
    """Grad-CAM of a Keras image -> probability model (flat, or a chain of layers one of which nests the backbone)."""

    def __init__(self, model: Any) -> None:
        import keras

        self.model = model
        top, target = _last_spatial(model)
        self.layer_name = target.name
        if top is target:  # a flat functional model: the standard two-output model
            self._features = keras.Model(model.inputs, [target.output, model.output])
            self._after: list[Any] = []
        else:  # nested: the sub-model gives (map, its output); the top-level layers after it finish the pass
            self._features = keras.Model(top.inputs, [target.output, top.output])
            layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
            if layers[0] is not top:
                raise RsdetectError(f"{model.name}: Grad-CAM expects the nested backbone first, got {layers[0].name}")
            self._after = layers[1:]
        size = model.input_shape[1] or 32
        probe = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
        expected = np.asarray(model(probe, training=False), np.float64).reshape(-1)
        got = self.maps(probe)[0]
        if not np.allclose(got, expected, atol=CHAIN_TOLERANCE):  # a non-chain model (branches after the backbone)
            raise RsdetectError(f"{model.name}: cannot split the model for Grad-CAM (rebuilt pass gives {got[0]:.6f}, "
                                f"the model {expected[0]:.6f})")

    def maps(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (n,) and Grad-CAM maps (n, h, w) in [0, 1] of a batch of float32 RGB 0-255 tiles."""
        import tensorflow as tf

        x = tf.convert_to_tensor(tiles, tf.float32)
        with tf.GradientTape() as tape:
            fmap, out = self._features(x, training=False)
            for layer in self._after:
                out = layer(out, training=False)
            out = tf.reshape(tf.cast(out, tf.float32), [-1])
        # Tiles are independent (BatchNorm in inference mode), so d(sum)/d(map) is each tile's own gradient.
        grads = tape.gradient(out, fmap)
        fmap, grads = np.asarray(fmap, np.float64), np.asarray(grads, np.float64)
        cam = np.maximum((fmap * grads.mean(axis=(1, 2), keepdims=True)).sum(-1), 0.0)
        top = cam.max(axis=(1, 2), keepdims=True)
        cam = np.divide(cam, top, out=np.zeros_like(cam), where=top > 0)
        return np.asarray(out, np.float64), cam.astype(np.float32)

    def frame(self, rgb: np.ndarray, size: int) -> FrameCam:
        """Grad-CAM of an RGB frame on its firing tile (the highest-probability S x S tile), in frame pixels."""
        tiles, boxes = to_tiles(rgb, size)
        probs, cams = self.maps(tiles)
        k = int(np.argmax(probs))
        x, y, w, h = boxes[k]
        heat = np.zeros(rgb.shape[:2], np.float32)
        heat[y:y + h, x:x + w] = cv2.resize(cams[k], (w, h), interpolation=cv2.INTER_LINEAR)
        peak = None
        if heat.max() > 0:
            py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
            peak = (int(px), int(py))
        return FrameCam(float(probs[k]), boxes[k], heat, peak)


def overlay(rgb: np.ndarray, cam: FrameCam, strength: float = 0.5) -> np.ndarray:
    """The frame with the map blended in (JET colours, weight `strength` * heat, so cold parts keep the frame),
    the firing tile outlined and the peak ringed; RGB uint8."""
    jet = cv2.applyColorMap(np.round(255 * cam.heat).astype(np.uint8), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(jet, cv2.COLOR_BGR2RGB)
    a = (strength * cam.heat)[..., None]
    out = np.clip(rgb * (1 - a) + colours * a + 0.5, 0, 255).astype(np.uint8)
    x, y, w, h = cam.tile
    thick = max(1, min(rgb.shape[:2]) // 200)
    cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), thick)
    if cam.peak is not None:
        cv2.circle(out, cam.peak, max(3, min(rgb.shape[:2]) // 40), (255, 255, 255), thick, cv2.LINE_AA)
    return out
