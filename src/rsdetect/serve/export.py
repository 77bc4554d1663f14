"""`rsdetect export`: the Keras model (a .keras file or a registry URI) as TFLite or ONNX, written only
after the exported model is checked to agree with Keras on a few inputs.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.io import atomic_file, write_json
from rsdetect.serve import loaders
from rsdetect.serve.loaders import sidecar_path
from rsdetect.serve.report_dir import check_output_file

FORMATS = ("tflite", "onnx")
TOLERANCE = 1e-4
ONNX_OPSET = 17


def tflite_bytes(model: Any, configure: Callable[[Any], None] | None = None) -> bytes:
    """Convert with TFLiteConverter.from_keras_model (from_concrete_functions gave NaN outputs here).
    `configure(converter)` may set converter options first (benchmarks/bench_infer.py's quantized exports)."""
    import tensorflow as tf
    from tensorflow.lite.python.convert_phase import ConverterError

    # The converter prints its temporary SavedModel's path and signature to stdout: noise for a CLI.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if configure is not None:
                configure(converter)
            return converter.convert()
        except (ConverterError, ValueError, NotImplementedError) as exc:
            raise RsdetectError(f"TFLite conversion failed: {str(exc).splitlines()[0][:200]}") from None


def onnx_bytes(model: Any, image_size: int) -> bytes:
    """Convert with tf2onnx (batch dimension left dynamic); a clear error if tf2onnx is not installed."""
    try:
        import tf2onnx
    except ImportError:
        raise RsdetectError("--format onnx needs tf2onnx and onnxruntime, which are not installed "
                            "(pip install tf2onnx onnxruntime)") from None
    import tensorflow as tf

    # tf2onnx warns about graph optimisations it skips (the result is still checked below).
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    spec = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name="image"),)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET)
        except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as exc:
            raise RsdetectError(f"ONNX conversion with tf2onnx {tf2onnx.__version__} failed: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return proto.SerializeToString()


def check_inputs(image_size: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """n RGB 0-255 float32 images: half uniform noise, half smooth colour fields (closer to real frames)."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (n - n // 2, image_size, image_size, 3))
    smooth = [cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (image_size, image_size), interpolation=cv2.INTER_CUBIC)
              for _ in range(n // 2)]
    images = np.concatenate([noise, np.array(smooth).reshape(-1, image_size, image_size, 3)])
    return np.clip(images, 0, 255).astype(np.float32)


def max_abs_diff(keras_model: Any, exported_path: str | os.PathLike, fmt: str, image_size: int, n: int = 4) -> float:
    """Largest |p_exported - p_keras| over n check images, scored through the same loaders `scan` uses."""
    x = check_inputs(image_size, n)
    # Looked up on the module at call time, so the check always uses the loader `scan` would use.
    scorer, size = loaders.tflite_scorer(exported_path) if fmt == "tflite" else loaders.onnx_scorer(exported_path)
    if size != image_size:
        raise RsdetectError(f"exported model takes {size}px images, Keras takes {image_size}px")
    diff = np.abs(scorer(x) - loaders.keras_scorer(keras_model)(x))
    return float(np.nan_to_num(diff, nan=np.inf).max())  # NaN outputs must fail the check, not pass it


def export_model(spec: str, fmt: str, out: str | os.PathLike, tolerance: float = TOLERANCE,
                 serving: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export a Keras model (path or models:/ URI) to `out`; written only if it agrees with Keras within tolerance.
    `serving` (config.serving_params: the shear and video.analysis params) goes into its sidecar with the threshold,
    so `scan` and `watch` on a camera host without params.yaml measure video as here (loaders.exported_serving)."""
    if fmt not in FORMATS:
        raise RsdetectError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.suffix.lower() != f".{fmt}":
        raise RsdetectError(f"--out {out}: use a .{fmt} file name (scan picks the runtime from the extension)")
    # Before loading and converting (tens of seconds): a path that cannot be written fails now, in one line.
    check_output_file(out)
    check_output_file(sidecar_path(out))
    model, size, threshold = loaders.resolve_keras(spec)
    data = tflite_bytes(model) if fmt == "tflite" else onnx_bytes(model, size)
    # Checked as the temp file, under the model's extension: a model that disagrees never takes the name `out`.
    with atomic_file(out, suffix=out.suffix) as f:
        f.write(data)
        f.flush()
        diff = max_abs_diff(model, f.name, fmt, size)
        if not diff < tolerance:
            raise RsdetectError(f"exported {fmt} model disagrees with Keras: max |diff| {diff:.3g} >= {tolerance:g}; "
                                "not written")
    result = {"source": spec, "format": fmt, "path": str(out), "bytes": len(data), "image_size": size,
              "threshold": threshold, "max_abs_diff": diff}
    # The registered threshold and the serving params do not survive conversion; a sidecar keeps them so `scan`
    # flags as the registry would and measures video as the pipeline did.
    sidecar = sidecar_path(out)
    meta = {"source": spec, "image_size": size, **({} if threshold is None else {"threshold": threshold}),
            **({} if serving is None else {"serving": serving})}
    if threshold is not None or serving is not None:
        write_json(sidecar, meta)
    else:
        sidecar.unlink(missing_ok=True)
    result["serving_params"] = serving is not None
    return result

