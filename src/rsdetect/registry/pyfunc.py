"""The MLflow pyfunc that production loads: raw images in (arrays, bytes, base64, a DataFrame), probability, flag
and tile out, with preprocessing and the threshold inside the model."""
from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Any

import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.preprocess import TILE_BATCH, box_text, decode, score_frames


def decode_frame(item: Any) -> np.ndarray:
    """One input frame as RGB uint8 (H, W, 3): an RGB array, or encoded image bytes (raw or base64 text)
    decoded by preprocess.decode, the decoder every other path uses."""
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim in (2, 3):
        return item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=2)
    if isinstance(item, str):
        try:
            item = base64.b64decode(item, validate=True)
        except binascii.Error:
            raise RsdetectError("input image is not valid base64") from None
    if isinstance(item, (bytes, bytearray)):
        return decode(item, "input image")
    raise RsdetectError(f"unsupported image input of type {type(item).__name__} "
                        "(give RGB uint8 arrays or encoded bytes)")


def iter_frames(model_input: Any) -> Iterator[np.ndarray]:
    """Frames of a (N, H, W, 3) uint8 array, a list of arrays/bytes, or a DataFrame with an `image` column,
    decoded one at a time (a test set's encoded bytes are small; all of it decoded at once is not)."""
    if hasattr(model_input, "columns"):
        column = "image" if "image" in model_input.columns else model_input.columns[0]
        items = model_input[column].tolist()
    elif isinstance(model_input, np.ndarray) and model_input.ndim == 3 and model_input.dtype == np.uint8:
        items = [model_input]
    else:
        items = model_input if isinstance(model_input, np.ndarray) and model_input.ndim == 4 else list(model_input)
    return (decode_frame(v) for v in items)


def frames_from_input(model_input: Any) -> list[np.ndarray]:
    """Every frame of the input (see iter_frames), decoded."""
    return list(iter_frames(model_input))


_Base: type
try:
    import mlflow.pyfunc as _pyfunc
    _Base = _pyfunc.PythonModel
except ImportError:  # scanning with an exported model needs no MLflow
    _Base = object


PREDICT_BATCH = TILE_BATCH  # tiles per model call in the pyfunc


class RsDetector(_Base):
    """MLflow pyfunc: raw images in; probability, flag (threshold from the model config) and the tile that
    gave the probability out. Frames are scored whole, by tiles, as in preprocess.score_frames."""

    _skip_type_hint_validation = True  # inputs are arrays, bytes or DataFrames: validated in decode_frame

    def load_context(self, context) -> None:
        self._load(context.artifacts["keras_model"], float(context.model_config["threshold"]),
                   int(context.model_config["image_size"]))

    def _load(self, keras_path: str, threshold: float, image_size: int) -> None:
        import keras

        self.model = keras.saving.load_model(keras_path, compile=False)
        self.threshold, self.image_size = threshold, image_size

    @classmethod
    def from_keras(cls, keras_path: str, threshold: float, image_size: int) -> RsDetector:
        """The pyfunc as the registry would load it, without a registry: the gate scores a candidate through the
        very predict() that scores the champion."""
        detector = cls()
        detector._load(keras_path, threshold, image_size)
        return detector

    def predict(self, context, model_input, params=None):
        import pandas as pd

        # A chunk of tiles at a time: one call on a whole test set holds every frame's activations at once
        # (24 GB for 400 frames at 224 px, killed for memory).
        prob, boxes = score_frames(lambda x: self.model(x, training=False), iter_frames(model_input),
                                   self.image_size, PREDICT_BATCH)
        return pd.DataFrame({"probability": prob, "flag": prob >= self.threshold,
                             "tile": pd.Series([box_text(b) for b in boxes], dtype=object)})
