"""Model loading for `scan`, `export` (and any later service): a Keras file, an MLflow registry URI
(models:/NAME@ALIAS, runs:/...), a pyfunc folder, or an exported .tflite / .onnx file, each turned into one
`Scorer` with its input size and registered threshold.

Lives below both `scan` and `export` so that exporting does not depend on the scanner.
"""
from __future__ import annotations

import json
import os
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsdetect.errors import RsdetectError

Scorer = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) float32 RGB 0-255 tiles -> (N,) probabilities
REGISTRY_PREFIXES = ("models:/", "runs:/")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class LoadedModel:
    """A scorer and what scanning needs to know about its model."""

    scorer: Scorer
    image_size: int
    threshold: float | None  # from the registered model's config; None for plain files
    kind: str
    name: str
    keras_model: Any = None  # the Keras model behind the scorer (keras, pyfunc-keras), for Grad-CAM; None otherwise


def keras_scorer(model: Any, compiled: bool = True) -> Scorer:
    """Keras scoring: predict_on_batch (a traced graph: ~8x faster than an eager call at batch 1 on CPU,
    see benchmarks/bench_infer.py) or, with compiled=False, the model called directly (eager)."""
    def score(batch: np.ndarray) -> np.ndarray:
        out = model.predict_on_batch(batch) if compiled else model(batch, training=False)
        return np.asarray(out, np.float64).reshape(-1)
    return score


def tflite_scorer(path: str | os.PathLike, workers: int | None = None, threads: int = 1) -> tuple[Scorer, int]:
    """A LiteRT scorer and its input image size: `workers` interpreters (default one per core) of `threads`
    threads each; each batch is split between them and its parts scored in parallel (invoke releases the GIL).
    The scorer takes one call at a time (a lock serialises callers).

    Why one single-threaded interpreter per core rather than one interpreter with a thread per core: XNNPACK's
    threads meet after every layer, so a thread held up by another job (scan's own decoding, or other processes)
    stalls the whole call. 160 px MobileNetV3Small on 2 shared cores: one 2-thread interpreter at batch 16 gave
    1080 tiles/s quiet but 1.9-2.6 ms CPU per tile, one 1-thread interpreter 590-730 tiles/s at 1.4-1.6 ms CPU;
    under load 11 it was 130-141 tiles/s for the 2-thread one vs 144-205 for a 1-thread one (bench_scan.py
    measures the two set-ups side by side). A tile's probability does not depend on how the batch is split.
    """
    from ai_edge_litert.interpreter import Interpreter

    workers = max(1, workers or os.cpu_count() or 1)
    try:
        interps = [Interpreter(model_path=str(path), num_threads=threads) for _ in range(workers)]
    except ValueError as exc:
        raise RsdetectError(f"{path}: not a loadable TFLite model ({str(exc).splitlines()[0][:160]})") from None
    inp, out = interps[0].get_input_details()[0], interps[0].get_output_details()[0]
    if inp["dtype"] != np.float32 or len(inp["shape"]) != 4:
        raise RsdetectError(f"{path}: expected a float32 (N, S, S, 3) input, got {inp['dtype'].__name__} "
                            f"{list(inp['shape'])}")
    size, current = int(inp["shape"][1]), [-1] * workers
    pool = ThreadPoolExecutor(workers, thread_name_prefix="tflite") if workers > 1 else None
    lock = threading.Lock()

    def run(k: int, part: np.ndarray) -> np.ndarray:
        interp = interps[k]
        if current[k] != len(part):
            interp.resize_tensor_input(inp["index"], [len(part), size, size, 3])
            interp.allocate_tensors()
            current[k] = len(part)
        interp.set_tensor(inp["index"], np.ascontiguousarray(part, np.float32))
        interp.invoke()
        return interp.get_tensor(out["index"]).astype(np.float64).reshape(-1)

    def score(batch: np.ndarray) -> np.ndarray:
        parts = np.array_split(batch, max(1, min(workers, len(batch))))
        with lock:
            if pool is None or len(parts) == 1:
                return run(0, parts[0])
            return np.concatenate(list(pool.map(run, range(len(parts)), parts)))
    return score, size


def onnx_scorer(path: str | os.PathLike, threads: int | None = None) -> tuple[Scorer, int]:
    """An ONNX Runtime (CPU) scorer (`threads` intra-op threads, default ONNX Runtime's) and its input image size."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RsdetectError("scanning an .onnx model needs onnxruntime (pip install onnxruntime)") from None
    from onnxruntime.capi.onnxruntime_pybind11_state import (
        Fail,
        InvalidArgument,
        InvalidGraph,
        InvalidProtobuf,
        NoSuchFile,
    )

    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    # onnxruntime raises plain Exceptions of its own, not RuntimeError
    except (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile) as exc:
        raise RsdetectError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:160]})") from None
    inp = sess.get_inputs()[0]
    size = inp.shape[1] if len(inp.shape) == 4 and isinstance(inp.shape[1], int) else 224

    def score(batch: np.ndarray) -> np.ndarray:
        out = sess.run(None, {inp.name: np.ascontiguousarray(batch, np.float32)})[0]
        return np.asarray(out, np.float64).reshape(-1)
    return score, size


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """Where an exported model's metadata (threshold, image size) lives: <model>.json."""
    return Path(f"{model_path}.json")


def sidecar_meta(path: str | os.PathLike) -> dict[str, Any]:
    """What `rsdetect export` saved beside an exported model (its sidecar): {} where there is none; RsdetectError
    naming it where it is not a JSON object."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise RsdetectError(f"{sidecar}: not valid model metadata JSON")
    return meta


def exported_threshold(path: str | os.PathLike) -> float | None:
    """The registered threshold `rsdetect export` saved beside an exported model (its sidecar), if any."""
    thr = sidecar_meta(path).get("threshold")
    return None if thr is None else float(thr)


def exported_serving(path: str | os.PathLike) -> tuple[Any, Any] | None:
    """The serving params (ShearParams, VideoAnalysisParams) `rsdetect export` saved beside an exported model, or None
    (no sidecar, or one without them: exported before they were saved); ConfigError naming the sidecar if bad."""
    from rsdetect.config import parse_serving

    meta = sidecar_meta(path)
    return parse_serving(meta["serving"], str(sidecar_path(path))) if "serving" in meta else None


def registered_serving(spec: str) -> tuple[Any, Any] | None:
    """The serving params (ShearParams, VideoAnalysisParams) the register stage saved in a registered model's config
    (models:/, runs:/ or a pyfunc folder: its MLmodel file only, not the model), or None where it holds none
    (registered before they were saved); one line naming the model where they are bad or it cannot be read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from rsdetect.config import parse_serving
    from rsdetect.registry.tracking import tracking_server, tracking_uri

    use_registry(spec)
    try:
        with tracking_server(tracking_uri()):
            info = mlflow.models.get_model_info(spec)
    except MlflowException as exc:
        raise RsdetectError(f"{spec}: cannot read the model's config ({str(exc).splitlines()[0][:200]})") from None
    except OSError as exc:
        raise RsdetectError(f"{spec}: cannot read the model's config ({exc.strerror or type(exc).__name__})") from None
    config = (info.flavors.get("python_function") or {}).get("config") or {}
    return parse_serving(config["serving"], f"{spec} (its model config)") if "serving" in config else None


def use_registry(spec: str) -> None:
    """Point MLflow at the registry a models:/ or runs:/ `spec` is read from (tracking_uri: MLFLOW_TRACKING_URI or
    the checkout's SQLite file), refusing a SQLite file that does not exist; a folder needs none."""
    import mlflow

    from rsdetect.registry.tracking import tracking_uri  # here, not at the top: it imports MLflow (3 s of CPU), which
    # .tflite/.onnx/.keras scans and every Dask worker process that unpickles a scan task do not need

    if spec.startswith(REGISTRY_PREFIXES):
        _ensure_registry(tracking_uri())
        mlflow.set_tracking_uri(tracking_uri())


def _ensure_registry(uri: str) -> None:
    """Refuse a SQLite tracking URI whose file does not exist (MLflow would silently create an empty one)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            raise RsdetectError(f"no MLflow registry at {uri}; set MLFLOW_TRACKING_URI or give a .keras/.tflite/.onnx "
                                "path")


def load_pyfunc(uri: str) -> tuple[Any, Any]:
    """Load an MLflow pyfunc (models:/, runs:/ or a local model folder); returns (pyfunc, python_model or None).

    Loading unpickles the folder's python_model.pkl, which runs whatever code it holds: model folders and
    registries must be trusted (docs/security.md). What their code raises is still one line."""
    import mlflow
    from mlflow.exceptions import MlflowException

    use_registry(uri)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise RsdetectError(f"{uri}: cannot load model ({str(exc).splitlines()[0][:200]})") from None
    except OSError as exc:
        raise RsdetectError(f"{uri}: cannot load model ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001  unpickling runs the folder's own code: any error can come out of it
        first = (str(exc).splitlines() or [""])[0][:160]
        raise RsdetectError(f"{uri}: cannot load model ({type(exc).__name__}: {first}); a model folder or registry "
                            f"runs its own code when loaded: use only trusted ones (docs/security.md)") from None
    try:
        inner = loaded.unwrap_python_model()
    except MlflowException:  # not a PythonModel flavour (e.g. a plain keras pyfunc): no unwrapping
        inner = None
    return loaded, inner


def _check_keras_container(path: Path) -> None:
    """A .keras file is a zip archive and an .h5 file an HDF5 one; anything else is named as such here, because
    Keras reports a .keras file that is not a zip as "File not found"."""
    if path.suffix.lower() == ".h5":
        with open(path, "rb") as f:
            ok = f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
        kind = "an HDF5"
    else:
        ok, kind = zipfile.is_zipfile(path), "a zip"
    if not ok:
        raise RsdetectError(f"{path}: not a Keras model file (expected {kind} archive; "
                            f"is it truncated, or another kind of file renamed?)")


def load_keras_file(path: str | os.PathLike) -> Any:
    """keras.saving.load_model with one-line errors that say what is wrong with the file."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise RsdetectError(f"{path}: model file not found")
    _check_keras_container(path)
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise RsdetectError(f"{path}: cannot load Keras model ({str(exc).splitlines()[0][:160]})") from None


def _keras_size(model: Any) -> int:
    """The square input size of a Keras image model (224 if it takes any size)."""
    shape = model.input_shape
    return int(shape[1]) if shape[1] else 224


def _is_keras_path(spec: str) -> bool:
    return spec.endswith((".keras", ".h5")) and not spec.startswith(REGISTRY_PREFIXES)


def resolve_keras(spec: str) -> tuple[Any, int, float | None]:
    """(Keras model, image size, threshold or None) from a registry URI / pyfunc folder or a .keras file."""
    if _is_keras_path(spec):
        model = load_keras_file(spec)
        return model, _keras_size(model), None
    loaded, inner = load_pyfunc(spec)
    if inner is None or getattr(inner, "model", None) is None:
        raise RsdetectError(f"{spec}: not an rsdetect pyfunc (no Keras model inside)")
    size = int(getattr(inner, "image_size", 0) or _keras_size(inner.model))
    thr = getattr(inner, "threshold", None)
    return inner.model, size, None if thr is None else float(thr)


def load_model(spec: str, threads: int | None = None) -> LoadedModel:
    """A scorer for a models:/ or runs:/ URI, a pyfunc folder, or a .keras / .tflite / .onnx file. `threads`: the
    .tflite / .onnx runtime's threads (default: all cores), for processes that share a machine
    (rsdetect.serve.shard)."""
    suffix = Path(spec).suffix.lower() if not spec.startswith(REGISTRY_PREFIXES) else ""
    if suffix in (".tflite", ".onnx"):
        if not Path(spec).is_file():
            raise RsdetectError(f"{spec}: model file not found")
        scorer, size = tflite_scorer(spec, workers=threads) if suffix == ".tflite" else onnx_scorer(spec, threads)
        return LoadedModel(scorer, size, exported_threshold(spec), suffix[1:], spec)
    if suffix in (".keras", ".h5"):
        model, size, thr = resolve_keras(spec)
        return LoadedModel(keras_scorer(model), size, thr, "keras", spec, model)
    if not spec.startswith(REGISTRY_PREFIXES) and not (Path(spec) / "MLmodel").is_file():
        raise RsdetectError(f"{spec}: not a model (give models:/NAME@ALIAS, a pyfunc folder, or a "
                            ".keras/.tflite/.onnx file)")
    loaded, inner = load_pyfunc(spec)
    if inner is not None and getattr(inner, "model", None) is not None:
        size = int(getattr(inner, "image_size", 0) or _keras_size(inner.model))
        thr = getattr(inner, "threshold", None)
        return LoadedModel(keras_scorer(inner.model), size, None if thr is None else float(thr), "pyfunc-keras", spec,
                           inner.model)
    # Any other pyfunc that takes images: send it the tiles, already at its size (its own resize is then a no-op).
    config = loaded.model_config or {}
    size = int(config.get("image_size", 224))

    def score(batch: np.ndarray) -> np.ndarray:
        out = loaded.predict([np.clip(f, 0, 255).astype(np.uint8) for f in batch])
        return np.asarray(out["probability"] if hasattr(out, "columns") else out, np.float64).reshape(-1)
    thr = config.get("threshold")
    return LoadedModel(score, size, None if thr is None else float(thr), "pyfunc", spec)
