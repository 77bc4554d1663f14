"""`rsdetect scan`: score frames from images, videos and streams with a registered or exported model.

Frames are sampled per source, batched, scored, smoothed per camera (rolling mean over the last K scored
frames) and flagged at a threshold. Reports (frames.jsonl/.csv, summary.json, worst frames, a chart,
optional annotated videos) are written atomically; a source that fails is reported and counted while the
other sources go on.
"""
from __future__ import annotations

import os

# FFmpeg's own connection/parse chatter would bury the one-line reports; OpenCV reads this on first use.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import csv
import glob
import heapq
import io
import json
import math
import re
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlparse

import cv2
import numpy as np
from tqdm import tqdm

from rsdetect.config import RsdetectError
from rsdetect.io import atomic_write_bytes, read_yaml, write_json
from rsdetect.preprocess import Box, box_text, decode, score_frames
from rsdetect.registry import tracking_uri

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
DEFAULT_MODEL = "models:/rs-detector@champion"
DEFAULT_THRESHOLD = 0.5
WORST_PER_CAMERA = 5
STREAM_TIMEOUT_MS = 10_000  # a dead or stalled stream must end, not hang the scan
FRAME_COUNT_SLACK = 1  # containers may over-report their frame count by one
ANNOTATE_MAX_WIDTH = 960  # annotated videos are for review; full 4K copies would be huge
FIELDS = ("camera", "frame_index", "timestamp_s", "probability", "smoothed", "flag", "tile", "source")

FrameItem = tuple[int, Optional[float], np.ndarray]  # (frame_index, timestamp_s or None, RGB uint8 frame)
Scorer = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) float32 RGB 0-255 tiles -> (N,) probabilities


class SourceError(RsdetectError):
    """A source that cannot be read (or ends early): reported and counted; the other sources go on."""


# ---------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    """One camera's input: kind is images, video, stream or missing (reported as a failure when scanned)."""

    camera: str
    spec: str
    kind: str
    paths: tuple[str, ...] = ()


def is_url(spec: str) -> bool:
    """True for stream URLs (rtsp://, http://, ...) that go straight to cv2.VideoCapture."""
    return urlparse(spec).scheme.lower() in STREAM_SCHEMES


def redact(spec: str) -> str:
    """A source as shown in reports and messages: a stream URL's password replaced by ***."""
    parsed = urlparse(spec) if is_url(spec) else None
    if parsed is None or parsed.password is None:
        return spec
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)).geturl()


def default_camera_name(spec: str) -> str:
    """A camera name from a source: file stem, folder name, a glob's folder, or a URL's last path part."""
    if is_url(spec):
        parsed = urlparse(spec)
        return Path(parsed.path).stem or parsed.hostname or "stream"
    path = Path(spec)
    if path.is_dir():
        return path.resolve().name
    if glob.has_magic(spec):
        parent = Path(spec).parent
        while glob.has_magic(str(parent)):
            parent = parent.parent
        return parent.resolve().name or "images"
    return path.stem or "camera"


def safe_name(name: str) -> str:
    """A camera name usable in file names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "camera"


def resolve_source(camera: str, spec: str) -> Source:
    """Classify a source spec; a path that does not exist becomes kind 'missing' (a failure, not a usage error)."""
    if is_url(spec):
        return Source(camera, spec, "stream")
    path = Path(spec)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        return Source(camera, spec, "images", tuple(files))
    if path.is_file():
        return Source(camera, spec, "images", (spec,)) if path.suffix.lower() in IMAGE_EXTS else Source(camera, spec, "video")
    if glob.has_magic(spec):
        files = sorted(p for p in glob.glob(spec) if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTS)
        return Source(camera, spec, "images", tuple(files))
    return Source(camera, spec, "missing")


def _split_named(arg: str) -> tuple[str | None, str]:
    """'cam1=path' -> ('cam1', 'path'); URLs with '=' in the query and existing paths stay unnamed."""
    name, sep, rest = arg.partition("=")
    if sep and rest and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and not Path(arg).exists():
        return name, rest
    return None, arg


def read_cameras_yaml(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, source) pairs from a YAML file {cameras: {name: source}}."""
    path = Path(path)
    raw = read_yaml(path, "cameras file", RsdetectError)
    cams = raw.get("cameras") if isinstance(raw, dict) else None
    if not isinstance(cams, dict) or not cams:
        raise RsdetectError(f"{path}: expected a mapping 'cameras: {{name: source}}'")
    base = path.resolve().parent
    pairs = []
    for name, spec in cams.items():
        if not isinstance(spec, str) or not spec:
            raise RsdetectError(f"{path}: camera {name!r} needs a source string")
        # Relative paths are relative to the YAML file, so a cameras file can travel with its footage.
        if not is_url(spec) and not Path(spec).is_absolute():
            spec = str(base / spec)
        pairs.append((str(name), spec))
    return pairs


def parse_sources(args: list[str], cameras_yaml: str | None = None) -> list[Source]:
    """Sources from CLI args (optionally name=source) and a cameras YAML; unnamed ones get unique stem names."""
    named: list[tuple[str | None, str]] = [_split_named(a) for a in args]
    if cameras_yaml:
        named += read_cameras_yaml(cameras_yaml)
    if not named:
        raise RsdetectError("no sources: give image/video paths, folders, globs, stream URLs or --cameras FILE")
    explicit = [n for n, _ in named if n is not None]
    dupes = sorted({n for n in explicit if explicit.count(n) > 1})
    if dupes:
        raise RsdetectError(f"camera name {dupes[0]!r} is used twice")
    taken = set(explicit)
    sources = []
    for name, spec in named:
        if name is None:
            stem, n = default_camera_name(spec), 1
            name = stem
            while name in taken:
                n += 1
                name = f"{stem}-{n}"
            taken.add(name)
        sources.append(resolve_source(name, spec))
    return sources


class Sampler:
    """Which frames to score: every Nth frame, or about F per second of video time (bucketed by timestamp)."""

    def __init__(self, every: int = 1, fps: float | None = None) -> None:
        self.every, self.fps, self._last_bucket = every, fps, -1

    def keep(self, index: int, timestamp: float | None) -> bool:
        """True if this frame is to be scored (call once per frame, in order)."""
        if self.fps is None or timestamp is None:
            return index % self.every == 0
        bucket = math.floor(timestamp * self.fps + 1e-6)  # epsilon: i/V*F lands on integers
        if bucket > self._last_bucket:
            self._last_bucket = bucket
            return True
        return False


def image_frames(paths: tuple[str, ...] | list[str], on_error: Callable[[str], None], every: int = 1,
                 max_frames: int | None = None) -> Iterator[FrameItem]:
    """Decode images in order (frame_index = position in `paths`); a corrupt one is reported via on_error and skipped."""
    kept = 0
    for index, path in enumerate(paths):
        if index % every or (max_frames is not None and kept >= max_frames):
            continue
        try:
            rgb = decode(path)  # the decoder training and the registered model use: same bytes, same pixels
        except RsdetectError as exc:
            on_error(str(exc))
            continue
        kept += 1
        yield index, None, rgb


def open_capture(spec: str) -> cv2.VideoCapture:
    """cv2.VideoCapture on a file or stream URL (URLs with open/read timeouts); SourceError if it does not open."""
    if is_url(spec):
        cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])
    elif not Path(spec).is_file():
        raise SourceError(f"{spec}: no such file")
    else:
        cap = cv2.VideoCapture(spec)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{redact(spec)}: cannot open (unreachable stream, not a video, or unsupported codec)")
    return cap


def _video_meta(cap: cv2.VideoCapture) -> tuple[float, int | None]:
    """(native fps or 0 if unknown, frame count or None if unknown, e.g. live streams)."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    return (fps if 0 < fps < 1000 else 0.0), (count if count > 0 else None)


def video_frames(spec: str, every: int = 1, fps: float | None = None,
                 max_frames: int | None = None) -> Iterator[FrameItem]:
    """Sampled frames of a video file or stream; SourceError if it does not open, yields nothing, or ends early."""
    cap = open_capture(spec)
    try:
        native, total = _video_meta(cap)
        sampler, start = Sampler(every, fps), time.monotonic()
        index, kept, exhausted = -1, 0, False
        while max_frames is None or kept < max_frames:
            if not cap.grab():  # grab without decoding: skipped frames cost no JPEG/H.264 decode
                exhausted = True
                break
            index += 1
            if native:
                ts = index / native
            else:  # live streams: the container clock if it has one, else wall time
                ts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000 or time.monotonic() - start
            if not sampler.keep(index, ts):
                continue
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                raise SourceError(f"{redact(spec)}: cannot decode frame {index}")
            kept += 1
            yield index, ts, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if not exhausted:
            return
        if index < 0:
            raise SourceError(f"{redact(spec)}: no frames could be read")
        if total is not None and index + 1 < total - FRAME_COUNT_SLACK:
            raise SourceError(f"{redact(spec)}: ended early after {index + 1} of {total} frames")
        if total is None and is_url(spec) and max_frames is not None and kept < max_frames:
            raise SourceError(f"{redact(spec)}: stream ended after {kept} of --max-frames {max_frames} scored frames")
    finally:
        cap.release()


def estimate_frames(source: Source, every: int, fps: float | None, max_frames: int | None) -> int | None:
    """How many frames a source will yield (for the progress bar), or None if unknown."""
    n: int | None
    if source.kind == "images":
        n = math.ceil(len(source.paths) / every)
    elif source.kind == "video":
        cap = cv2.VideoCapture(source.spec)
        native, total = _video_meta(cap) if cap.isOpened() else (0.0, None)
        cap.release()
        if total is None:
            n = None
        elif fps is not None and native:
            n = math.ceil(total / native * min(fps, native))
        else:
            n = math.ceil(total / every)
    else:
        n = None
    if max_frames is not None:
        return max_frames if n is None else min(n, max_frames)
    return n


def frames_of(source: Source, on_error: Callable[[str], None], every: int = 1, fps: float | None = None,
              max_frames: int | None = None) -> Iterator[FrameItem]:
    """The frame generator for a source of any kind."""
    if source.kind == "images" and source.paths:
        return image_frames(source.paths, on_error, every, max_frames)
    if source.kind in ("video", "stream"):
        return video_frames(source.spec, every, fps, max_frames)
    if source.kind == "images":
        return _failing(f"{source.spec}: no image files found")
    return _failing(f"{source.spec}: no such file, folder or matching glob")


def _failing(message: str) -> Iterator[FrameItem]:
    """A generator that raises SourceError(message) on first use."""
    raise SourceError(message)
    yield  # pragma: no cover  (makes this a generator)


# ---------------------------------------------------------------- scores

def smooth(probs: np.ndarray | list[float], k: int) -> np.ndarray:
    """Rolling mean over the last k values (fewer at the start): smoothed[i] = mean(probs[max(0, i-k+1): i+1])."""
    p = np.asarray(probs, np.float64)
    if k < 1:
        raise RsdetectError(f"--smooth must be >= 1, got {k}")
    c = np.concatenate([[0.0], np.cumsum(p)])
    i = np.arange(len(p))
    lo = np.maximum(0, i - k + 1)
    return (c[i + 1] - c[lo]) / (i + 1 - lo)


def longest_run(flags: list[bool] | np.ndarray) -> int:
    """Length of the longest run of consecutive True values."""
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def camera_summary(flags: list[bool] | np.ndarray, errors: list[str]) -> dict[str, Any]:
    """frames_scored, flagged, flagged_rate (None if nothing scored), longest_flagged_run and failures."""
    flags = np.asarray(flags, bool)
    n = int(flags.size)
    return {"frames_scored": n, "flagged": int(flags.sum()), "flagged_rate": float(flags.mean()) if n else None,
            "longest_flagged_run": longest_run(flags), "failures": len(errors), "errors": list(errors)}


@dataclass
class CameraState:
    """Running per-camera state: smoothing window, flags, worst frames and failures."""

    source: Source
    k: int
    threshold: float
    keep_scores: bool = False
    flags: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scores: list[tuple[int, float, float, bool]] = field(default_factory=list)  # for annotation only
    _window: deque = field(default_factory=deque)
    _worst: list = field(default_factory=list)  # min-heap of (probability, -frame_index, frame_index, rgb)

    def fail(self, message: str) -> None:
        """Count a failure and report it as one line on stderr (above any progress bar)."""
        self.errors.append(message)
        tqdm.write(f"scan: {self.source.camera}: {message}", file=sys.stderr)

    def add(self, frame_index: int, timestamp: float | None, prob: float, rgb: np.ndarray, tile: Box) -> dict[str, Any]:
        """Score one frame (its probability, from the tile `tile`) into the running state; returns its output row."""
        self._window.append(prob)
        if len(self._window) > self.k:
            self._window.popleft()
        smoothed = float(np.mean(self._window))  # same definition as smooth(); checked in the tests
        flag = smoothed >= self.threshold
        self.flags.append(flag)
        if self.keep_scores:
            self.scores.append((frame_index, prob, smoothed, flag))
        item = (prob, -frame_index, frame_index, rgb)  # ties: the earlier frame ranks worse
        if len(self._worst) < WORST_PER_CAMERA:
            heapq.heappush(self._worst, item)
        elif item[:2] > self._worst[0][:2]:
            heapq.heapreplace(self._worst, item)
        path = self.source.paths[frame_index] if self.source.kind == "images" else redact(self.source.spec)
        return {"camera": self.source.camera, "frame_index": frame_index,
                "timestamp_s": None if timestamp is None else round(float(timestamp), 6),
                "probability": round(prob, 6), "smoothed": round(smoothed, 6), "flag": bool(flag),
                "tile": box_text(tile), "source": path}

    def worst(self) -> list[tuple[float, int, np.ndarray]]:
        """The highest-probability frames, worst first: (probability, frame_index, rgb)."""
        return [(p, i, rgb) for p, _, i, rgb in sorted(self._worst, key=lambda t: t[:2], reverse=True)]


# ---------------------------------------------------------------- models

@dataclass(frozen=True)
class LoadedModel:
    """A scorer and what scanning needs to know about its model."""

    scorer: Scorer
    image_size: int
    threshold: float | None  # from the registered model's config; None for plain files
    kind: str
    name: str


def keras_scorer(model: Any, compiled: bool = True) -> Scorer:
    """Keras scoring: predict_on_batch (a traced graph: ~8x faster than an eager call at batch 1 on CPU,
    see benchmarks/bench_infer.py) or, with compiled=False, the model called directly (eager)."""
    def score(batch: np.ndarray) -> np.ndarray:
        out = model.predict_on_batch(batch) if compiled else model(batch, training=False)
        return np.asarray(out, np.float64).reshape(-1)
    return score


def tflite_scorer(path: str | os.PathLike) -> tuple[Scorer, int]:
    """A LiteRT interpreter scorer (resized to each batch size) and its input image size."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
    except ValueError as exc:
        raise RsdetectError(f"{path}: not a loadable TFLite model ({str(exc).splitlines()[0][:160]})") from None
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    if inp["dtype"] != np.float32 or len(inp["shape"]) != 4:
        raise RsdetectError(f"{path}: expected a float32 (N, S, S, 3) input, got {inp['dtype'].__name__} {list(inp['shape'])}")
    size, current = int(inp["shape"][1]), [-1]

    def score(batch: np.ndarray) -> np.ndarray:
        if current[0] != len(batch):
            interp.resize_tensor_input(inp["index"], [len(batch), size, size, 3])
            interp.allocate_tensors()
            current[0] = len(batch)
        interp.set_tensor(inp["index"], np.ascontiguousarray(batch, np.float32))
        interp.invoke()
        return interp.get_tensor(out["index"]).astype(np.float64).reshape(-1)
    return score, size


def onnx_scorer(path: str | os.PathLike) -> tuple[Scorer, int]:
    """An ONNX Runtime (CPU) scorer and its input image size."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RsdetectError("scanning an .onnx model needs onnxruntime (pip install onnxruntime)") from None
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile) as exc:  # plain Exceptions, not RuntimeError
        raise RsdetectError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:160]})") from None
    inp = sess.get_inputs()[0]
    size = inp.shape[1] if len(inp.shape) == 4 and isinstance(inp.shape[1], int) else 224

    def score(batch: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {inp.name: np.ascontiguousarray(batch, np.float32)})[0], np.float64).reshape(-1)
    return score, size


def exported_threshold(path: str | os.PathLike) -> float | None:
    """The registered threshold `rsdetect export` saved beside an exported model (<model>.json), if any."""
    sidecar = Path(f"{path}.json")
    if not sidecar.is_file():
        return None
    try:
        thr = json.loads(sidecar.read_text()).get("threshold")
    except (json.JSONDecodeError, AttributeError):
        raise RsdetectError(f"{sidecar}: not valid model metadata JSON") from None
    return None if thr is None else float(thr)


def _ensure_registry(uri: str) -> None:
    """Refuse a SQLite tracking URI whose file does not exist (MLflow would silently create an empty one)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            raise RsdetectError(f"no MLflow registry at {uri}; set MLFLOW_TRACKING_URI or give a .keras/.tflite/.onnx path")


def load_pyfunc(uri: str) -> tuple[Any, Any]:
    """Load an MLflow pyfunc (models:/, runs:/ or a local model folder); returns (pyfunc, python_model or None)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if uri.startswith(("models:/", "runs:/")):
        _ensure_registry(tracking_uri())
        mlflow.set_tracking_uri(tracking_uri())
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise RsdetectError(f"{uri}: cannot load model ({str(exc).splitlines()[0][:200]})") from None
    except OSError as exc:
        raise RsdetectError(f"{uri}: cannot load model ({exc.strerror or type(exc).__name__})") from None
    try:
        inner = loaded.unwrap_python_model()
    except MlflowException:  # not a PythonModel flavour (e.g. a plain keras pyfunc): no unwrapping
        inner = None
    return loaded, inner


def load_keras_file(path: str | os.PathLike) -> Any:
    """keras.saving.load_model with one-line errors."""
    import keras

    if not Path(path).is_file():
        raise RsdetectError(f"{path}: model file not found")
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError) as exc:
        raise RsdetectError(f"{path}: cannot load Keras model ({str(exc).splitlines()[0][:160]})") from None


def _keras_size(model: Any) -> int:
    """The square input size of a Keras image model (224 if it takes any size)."""
    shape = model.input_shape
    return int(shape[1]) if shape[1] else 224


def resolve_keras(spec: str) -> tuple[Any, int, float | None]:
    """(Keras model, image size, threshold or None) from a registry URI / pyfunc folder or a .keras file."""
    if spec.endswith((".keras", ".h5")) and not spec.startswith(("models:/", "runs:/")):
        model = load_keras_file(spec)
        return model, _keras_size(model), None
    loaded, inner = load_pyfunc(spec)
    if inner is None or getattr(inner, "model", None) is None:
        raise RsdetectError(f"{spec}: not an rsdetect pyfunc (no Keras model inside)")
    size = int(getattr(inner, "image_size", 0) or _keras_size(inner.model))
    thr = getattr(inner, "threshold", None)
    return inner.model, size, None if thr is None else float(thr)


def load_model(spec: str) -> LoadedModel:
    """A scorer for a models:/ or runs:/ URI, a pyfunc folder, or a .keras / .tflite / .onnx file."""
    suffix = Path(spec).suffix.lower() if not spec.startswith(("models:/", "runs:/")) else ""
    if suffix in (".tflite", ".onnx"):
        if not Path(spec).is_file():
            raise RsdetectError(f"{spec}: model file not found")
        scorer, size = tflite_scorer(spec) if suffix == ".tflite" else onnx_scorer(spec)
        return LoadedModel(scorer, size, exported_threshold(spec), suffix[1:], spec)
    if suffix in (".keras", ".h5"):
        model, size, thr = resolve_keras(spec)
        return LoadedModel(keras_scorer(model), size, thr, "keras", spec)
    if not spec.startswith(("models:/", "runs:/")) and not (Path(spec) / "MLmodel").is_file():
        raise RsdetectError(f"{spec}: not a model (give models:/NAME@ALIAS, a pyfunc folder, or a .keras/.tflite/.onnx file)")
    loaded, inner = load_pyfunc(spec)
    if inner is not None and getattr(inner, "model", None) is not None:
        size = int(getattr(inner, "image_size", 0) or _keras_size(inner.model))
        thr = getattr(inner, "threshold", None)
        return LoadedModel(keras_scorer(inner.model), size, None if thr is None else float(thr), "pyfunc-keras", spec)
    # Any other pyfunc that takes images: send it the tiles, already at its size (its own resize is then a no-op).
    config = loaded.model_config or {}
    size = int(config.get("image_size", 224))

    def score(batch: np.ndarray) -> np.ndarray:
        out = loaded.predict([np.clip(f, 0, 255).astype(np.uint8) for f in batch])
        return np.asarray(out["probability"] if hasattr(out, "columns") else out, np.float64).reshape(-1)
    thr = config.get("threshold")
    return LoadedModel(score, size, None if thr is None else float(thr), "pyfunc", spec)


# ---------------------------------------------------------------- scan

@dataclass(frozen=True)
class ScanOptions:
    """How to sample, batch, smooth and flag; validated on construction."""

    every: int = 1
    fps: float | None = None
    batch: int = 16
    smooth: int = 1
    threshold: float | None = None
    annotate: bool = False
    max_frames: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.every < 1:
            raise RsdetectError(f"--every must be >= 1, got {self.every}")
        if self.fps is not None and self.fps <= 0:
            raise RsdetectError(f"--fps must be > 0, got {self.fps}")
        if self.fps is not None and self.every != 1:
            raise RsdetectError("give either --every or --fps, not both")
        if self.batch < 1:
            raise RsdetectError(f"--batch must be >= 1, got {self.batch}")
        if self.smooth < 1:
            raise RsdetectError(f"--smooth must be >= 1, got {self.smooth}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise RsdetectError(f"--threshold must be within [0, 1], got {self.threshold}")
        if self.max_frames is not None and self.max_frames < 1:
            raise RsdetectError(f"--max-frames must be >= 1, got {self.max_frames}")


@dataclass(frozen=True)
class ScanResult:
    """What a scan wrote and how it ended (exit_code: 0 ok, 3 some source failed, 130 interrupted)."""

    out_dir: Path
    summary: dict[str, Any]
    exit_code: int
    interrupted: bool


def default_file_mode() -> int:
    """0o666 minus the umask: what open() would give (mkstemp's temp files are 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class _AtomicTextFile:
    """A text file written to a temp name beside its target and renamed into place on commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, default_file_mode())
        self.file = os.fdopen(fd, "w", newline="", encoding="utf-8")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        Path(self.tmp).unlink(missing_ok=True)


def _score_batch(batch: list[FrameItem], state: CameraState, model: LoadedModel,
                 emit: Callable[[dict[str, Any]], None], tiles_per_call: int) -> None:
    """Score each frame whole (S x S tiles at the training scale, the max over them; preprocess.score_frames)
    and emit one row per frame."""
    probs, boxes = score_frames(model.scorer, [rgb for _, _, rgb in batch], model.image_size, tiles_per_call)
    if not np.all(np.isfinite(probs)):  # a broken export must not pass as "nothing flagged"
        raise RsdetectError(f"model returned non-finite probabilities for {state.source.camera} frame {batch[0][0]}+")
    for (index, ts, rgb), p, box in zip(batch, probs, boxes, strict=True):
        emit(state.add(index, ts, float(p), rgb, box))


def scan_source(state: CameraState, model: LoadedModel, options: ScanOptions,
                emit: Callable[[dict[str, Any]], None]) -> None:
    """Score one source in batches; a SourceError is counted (frames read before it are still scored)."""
    source = state.source
    total = estimate_frames(source, options.every, options.fps, options.max_frames)
    batch: list[FrameItem] = []
    with tqdm(desc=source.camera, total=total, unit="frame", disable=not options.progress, file=sys.stderr) as bar, \
            contextlib.closing(frames_of(source, state.fail, options.every, options.fps, options.max_frames)) as frames:
        try:
            for item in frames:
                batch.append(item)
                if len(batch) >= options.batch:
                    _score_batch(batch, state, model, emit, options.batch)
                    bar.update(len(batch))
                    batch = []
        except SourceError as exc:
            state.fail(str(exc))
        if batch:
            _score_batch(batch, state, model, emit, options.batch)
            bar.update(len(batch))


def annotate_video(source: Source, scores: list[tuple[int, float, float, bool]], threshold: float,
                   out_path: Path, stop_at: int | None) -> None:
    """Re-read a video and write it (MJPG .avi) with each frame's latest score drawn on it; atomic."""
    cap = open_capture(source.spec)
    native, _ = _video_meta(cap)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.stem}.", suffix=".avi")
    os.fchmod(fd, default_file_mode())  # the writer reopens this path and keeps its mode
    os.close(fd)
    writer = None
    try:
        pos, current = 0, None
        index = -1
        while stop_at is None or index < stop_at:
            ok, bgr = cap.read()
            if not ok:
                break
            index += 1
            while pos < len(scores) and scores[pos][0] <= index:  # carry the last scored frame's score forward
                current, pos = scores[pos], pos + 1
            if bgr.shape[1] > ANNOTATE_MAX_WIDTH:
                scale = ANNOTATE_MAX_WIDTH / bgr.shape[1]
                bgr = cv2.resize(bgr, (ANNOTATE_MAX_WIDTH, round(bgr.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            if writer is None:
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"MJPG"), native or 25.0, (bgr.shape[1], bgr.shape[0]))
                if not writer.isOpened():
                    raise RsdetectError(f"{out_path}: cannot write an MJPG video here")
            writer.write(_draw_score(bgr, current, threshold))
        if writer is not None:
            writer.release()
            writer = None
            os.replace(tmp, out_path)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        Path(tmp).unlink(missing_ok=True)


def _draw_score(bgr: np.ndarray, score: tuple[int, float, float, bool] | None, threshold: float) -> np.ndarray:
    """A frame with a banner: probability, smoothed score, a bar and FLAG in red when flagged."""
    out = bgr.copy()
    h, w = out.shape[:2]
    band = max(14, h // 12)
    cv2.rectangle(out, (0, 0), (w, band), (0, 0, 0), -1)
    if score is None:
        text, colour, fill = "not scored yet", (200, 200, 200), 0.0
    else:
        _, p, s, flag = score
        text = f"p={p:.2f} smooth={s:.2f} thr={threshold:.2f}" + ("  FLAG" if flag else "")
        colour, fill = ((0, 0, 255) if flag else (0, 200, 0)), s
    cv2.rectangle(out, (0, band - 3), (int(w * fill), band), colour, -1)
    scale = band / 30
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    scale *= min(1.0, (w - 8) / max(width, 1))  # small frames: shrink the text rather than clip it
    cv2.putText(out, text, (4, band - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return out


def flagged_rate_chart(cameras: dict[str, dict[str, Any]], threshold: float, k: int) -> bytes:
    """A PNG bar chart of flagged rate per camera (failed cameras hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cameras)
    rates = [cameras[n]["flagged_rate"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.5))
    bars = ax.bar(names, rates, color=["#d62728" if r > 0 else "#2ca02c" for r in rates])
    for bar, n in zip(bars, names, strict=True):
        c = cameras[n]
        if c["failures"]:
            bar.set_hatch("//")
        ax.annotate(f"{c['flagged']}/{c['frames_scored']}" + (f"\n{c['failures']} failed" if c["failures"] else ""),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("flagged rate")
    ax.set_title(f"RS distortion flagged per camera (threshold {threshold:.2f}, smooth K={k})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _save_worst(out_dir: Path, state: CameraState) -> list[dict[str, Any]]:
    """Write the camera's worst frames as out/worst/<camera>_<frame>.jpg (removing stale ones); their entries."""
    worst_dir = out_dir / "worst"
    prefix = safe_name(state.source.camera)
    stale = re.compile(rf"{re.escape(prefix)}_\d+\.jpg")
    if worst_dir.is_dir():
        for old in worst_dir.iterdir():
            if stale.fullmatch(old.name):
                old.unlink()
    entries = []
    for p, index, rgb in state.worst():
        rel = f"worst/{prefix}_{index}.jpg"
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if ok:
            atomic_write_bytes(out_dir / rel, jpg.tobytes())
        entries.append({"frame_index": index, "probability": round(p, 6), "path": rel})
    return entries


def run_scan(sources: list[Source], model: LoadedModel, out_dir: str | os.PathLike,
             options: ScanOptions = ScanOptions()) -> ScanResult:
    """Scan every source into out_dir; Ctrl-C stops scoring and still writes what was scored (exit_code 130)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threshold = options.threshold if options.threshold is not None else (
        model.threshold if model.threshold is not None else DEFAULT_THRESHOLD)
    states = {s.camera: CameraState(s, options.smooth, threshold, keep_scores=options.annotate and s.kind == "video")
              for s in sources}
    jsonl, csvf = _AtomicTextFile(out / "frames.jsonl"), _AtomicTextFile(out / "frames.csv")
    writer = csv.DictWriter(csvf.file, fieldnames=FIELDS)
    writer.writeheader()

    def emit(row: dict[str, Any]) -> None:
        jsonl.file.write(json.dumps(row) + "\n")
        writer.writerow({k: "" if v is None else v for k, v in row.items()})

    interrupted = False
    annotated: dict[str, str] = {}
    try:
        for state in states.values():
            scan_source(state, model, options, emit)
            if state.keep_scores and state.scores:
                rel = f"annotated/{safe_name(state.source.camera)}.avi"
                hit_cap = options.max_frames is not None and len(state.flags) >= options.max_frames
                try:
                    annotate_video(state.source, state.scores, threshold, out / rel,
                                   state.scores[-1][0] if hit_cap else None)
                    annotated[state.source.camera] = rel
                except SourceError as exc:  # the file vanished between the passes: the scores still stand
                    tqdm.write(f"scan: {state.source.camera}: not annotated: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        tqdm.write("scan: interrupted; writing what was scored so far", file=sys.stderr)
    except BaseException:
        jsonl.discard()
        csvf.discard()
        raise
    jsonl.commit()
    csvf.commit()

    cameras: dict[str, dict[str, Any]] = {}
    for name, state in states.items():
        cameras[name] = {"source": redact(state.source.spec), "kind": state.source.kind,
                         **camera_summary(state.flags, state.errors), "worst_frames": _save_worst(out, state)}
        if name in annotated:
            cameras[name]["annotated_video"] = annotated[name]
    failed = sum(1 for c in cameras.values() if c["failures"])
    exit_code = 130 if interrupted else (3 if failed else 0)
    scored = sum(c["frames_scored"] for c in cameras.values())
    flagged = sum(c["flagged"] for c in cameras.values())
    summary = {"model": model.name, "model_kind": model.kind, "threshold": threshold, "smooth": options.smooth,
               "every": options.every, "fps": options.fps, "batch": options.batch, "max_frames": options.max_frames,
               "interrupted": interrupted, "exit_code": exit_code, "cameras": cameras,
               "totals": {"cameras": len(cameras), "failed_cameras": failed, "frames_scored": scored,
                          "flagged": flagged, "flagged_rate": flagged / scored if scored else None}}
    write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "flagged_rate.png", flagged_rate_chart(cameras, threshold, options.smooth))
    return ScanResult(out, summary, exit_code, interrupted)
