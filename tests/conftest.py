"""Shared fixtures: small data the tests make themselves, and the optional real COCO sample."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
SHARED_COCO = ROOT.parent / "shared" / "data" / "coco-person-sample"


def params_group(path: str, **overrides):
    """The params group at dotted `path` of the repo's params.yaml (e.g. "synthesize", "baselines.lines"), with
    `overrides` applied and re-validated: tests use the real values, and a bad override fails here, not later.
    (The schema has no defaults, so a group cannot be built from a few fields.)"""
    from rsdetect.config import load_params

    group = load_params(ROOT / "params.yaml")
    for name in path.split("."):
        group = getattr(group, name)
    return with_params(group, **overrides)


def texture(rng: np.random.Generator) -> np.ndarray:
    """A 640x480 soft texture (BGR): blurred noise at two scales, what the video tests film (flow needs texture)."""
    import cv2

    fine = cv2.GaussianBlur(rng.uniform(0, 255, (480, 640)), (0, 0), 2)
    coarse = cv2.resize(rng.uniform(0, 255, (12, 16)), (640, 480), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(np.clip(0.5 * fine + 0.5 * coarse, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def mains_clip(readout_ms: float, shutter: str, hz: float = 120.0, fps: float = 25.0, frames: int = 40,
               walker: bool = True, exposure_ms: float = 4.0, depth: float = 0.3, wave=None) -> list[np.ndarray]:
    """A fixed camera over `texture` (640x480) under lamps flickering at `hz` (rsdetect.synth.clips.lit: `wave`,
    by default |sin| of the mains, 1 - depth to 1 of their peak, each row exposed exposure_ms up to its read time; a
    global shutter reads every row at mid-readout). `walker`: a box crossing at 6 px/frame. Sensor noise, JPEG
    (tests/test_flicker.py, test_scan_video.py)."""
    from rsdetect.synth.clips import degrade, frame_times, lit, mains_wave

    rng = np.random.default_rng(7)
    scene = texture(np.random.default_rng(5))
    r = readout_ms * fps / 1000
    out = []
    for k in range(frames):
        image = scene.copy()
        if walker:
            image[180:300, 40 + 6 * k:90 + 6 * k] = (60, 90, 140)
        out.append(degrade(lit(image, frame_times(k, image.shape[0], r, shutter) / fps, hz, depth, exposure_ms,
                               wave or mains_wave), rng, 1.0, 90))
    return out


def params_raw(overrides: dict | None = None) -> dict:
    """The repo's params.yaml as a plain mapping, with `overrides` (a nested mapping) merged in key by key: a
    bad-value test changes one param of an otherwise valid file, so the error it gets is about that param."""
    import yaml

    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return out

    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides or {})


def with_params(group, **overrides):
    """`group` with `overrides`, validated (model_copy(update=...) alone would take any value)."""
    from rsdetect.config import updated

    return updated(group, **overrides)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small embedded-style COCO dataset (24 scenes) made by the generator."""
    from rsdetect.datasets.drawn import make_sample_dataset

    out = tmp_path_factory.mktemp("sample")
    make_sample_dataset(out, seed=3, n_images=24, width=200, height=150)
    return out


@pytest.fixture
def shared_coco() -> Path:
    """The real COCO photographs in ../shared; skip where absent (a user's clone has none)."""
    if not (SHARED_COCO / "instances_person_train2017_sample.json").is_file():
        pytest.skip("../shared/data/coco-person-sample is absent")
    return SHARED_COCO


COLOUR_GAIN = 0.05  # p = sigmoid(GAIN * mean(R - B)): red frames ~0.9994, blue frames ~0.0006


def colour_model(size: int, gain: float = COLOUR_GAIN, bias: float = 0.0):
    """A model with known scores: p = sigmoid(gain * mean(R - B) + bias) via a fixed 1x1 conv, pooling and unit."""
    import keras

    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(1, 1, use_bias=False, name="r_minus_b")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="gain")(x)
    model = keras.Model(inp, out)
    model.get_layer("r_minus_b").set_weights([np.array([1, 0, -1], np.float32).reshape(1, 1, 3, 1)])
    model.get_layer("gain").set_weights([np.array([[gain]], np.float32), np.array([bias], np.float32)])
    return model


def tree_digest(root: Path) -> str:
    """One hash of every file's relative path and bytes under `root`: equal digests, byte-identical trees."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def copy_tracked_files(dest: Path) -> None:
    """The repository's files as a fresh clone has them (tracked, plus untracked-not-ignored) copied to `dest`."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)


@pytest.fixture(scope="module")
def colour_tflite(tmp_path_factory) -> Path:
    """The colour model (32 px) as TFLite: Dask workers then load it without importing TensorFlow, which costs
    9 s of CPU per process here (keras import measured with time.process_time)."""
    from rsdetect.serve.export import tflite_bytes

    path = tmp_path_factory.mktemp("model") / "colour.tflite"
    path.write_bytes(tflite_bytes(colour_model(32)))
    return path


@pytest.fixture(scope="module")
def dask_client():
    """A local Dask cluster of 2 worker processes for a test module (it takes seconds to start)."""
    pytest.importorskip("distributed")
    from rsdetect.serve.shard import open_client

    with open_client(2) as client:
        yield client
