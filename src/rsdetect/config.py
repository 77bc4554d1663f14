"""params.yaml read once into typed, validated objects; bad values stop with one line naming the param."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np



class RsdetectError(Exception):
    """An error the user can fix; entry points print it as one line and exit non-zero."""


class ConfigError(RsdetectError):
    """A bad value in params.yaml."""


@dataclass(frozen=True)
class SampleParams:
    n_images: int = 240
    width: int = 320
    height: int = 240
    drawn: bool = True
    real: bool = True


@dataclass(frozen=True)
class CocoParams:
    annotations_url: str = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
    annotations_md5: str = "f4bbac642086de4f52a3fdda2de5fa2c"
    annotations_size: int = 252907541
    image_base_url: str = ""
    train_images: int = 1600
    test_images: int = 400
    min_person_area: float = 2000.0
    workers: int = 8
    timeout_s: float = 30.0
    retries: int = 3
    max_failed_fraction: float = 0.05


@dataclass(frozen=True)
class FetchParams:
    source: str = "sample"
    sample: SampleParams = field(default_factory=SampleParams)
    coco2017: CocoParams = field(default_factory=CocoParams)


@dataclass(frozen=True)
class SynthParams:
    size: int = 224
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    min_person_area: float = 600.0
    readout: tuple[float, float] = (0.5, 1.0)
    kinds: dict[str, float] = field(default_factory=lambda: {"object": 0.5, "pan": 0.25, "vibration": 0.25})
    object_speed: tuple[float, float] = (12.0, 48.0)
    object_turn: tuple[float, float] = (-24.0, 24.0)
    pan_speed: tuple[float, float] = (8.0, 32.0)
    vibration_amplitude: tuple[float, float] = (2.0, 6.0)
    vibration_cycles: tuple[float, float] = (0.5, 3.0)
    min_visible_px: float = 3.0
    jpeg_quality: int = 92
    pairs_per_photo: int = 1
    workers: int = 0


@dataclass(frozen=True)
class AugmentParams:
    flip: bool = True
    brightness: float = 20.0
    contrast: float = 0.2
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    noise_sigma: tuple[float, float] = (0.0, 4.0)
    jpeg_quality: tuple[float, float] = (70.0, 95.0)


@dataclass(frozen=True)
class PretrainParams:
    epochs: int = 40
    steps_per_epoch: int = 32
    batch_size: int = 32
    lr: float = 1e-3
    curriculum_epochs: int = 5
    curriculum_scale: float = 2.0
    val_pairs: int = 256
    patience: int = 10
    dropout: float = 0.2


@dataclass(frozen=True)
class ExternalParams:
    """The independent-recipe test set (Rengarajan et al. 2017); ranges are uniform draws, see rsdetect.external."""
    pairs_per_photo: int = 4
    jpeg_quality: int = 92
    window: int = 356                       # centre square the photo is resized to (short side)
    size: int = 256                         # central crop written out
    translation_linear: tuple[float, float] = (-57.0, 57.0)     # a1, px: tx(y) = a1*y + a2*y^2, y in [0, 1]
    translation_quadratic: tuple[float, float] = (-14.0, 14.0)  # a2, px
    rotation_linear: tuple[float, float] = (-2.0, 2.0)          # b1, degrees: theta(y) = b1*y + b2*y^2
    rotation_quadratic: tuple[float, float] = (-1.0, 1.0)       # b2, degrees
    twin_time: tuple[float, float] = (0.0, 1.0)                 # instant of the twin's rigid pose, in [0, 1]


@dataclass(frozen=True)
class FeatureParams:
    backbone: str = "small"
    image_size: int = 224
    weights: str = "none"
    batch_size: int = 32
    gpu_max_batch: int = 512
    calibration_images: int = 64


@dataclass(frozen=True)
class TrainParams:
    batch_size: int = 32
    head_epochs: int = 60
    head_lr: float = 0.003
    dropout: float = 0.2
    finetune_blocks: int = 0
    finetune_epochs: int = 4
    finetune_lr: float = 1e-4
    steps_per_epoch: int = 32
    curriculum_epochs: int = 0
    curriculum_scale: float = 1.0
    repeat: int = 0
    patience: int = 3
    deterministic: bool = True


@dataclass(frozen=True)
class LineParams:
    """The straight-line (physics) baseline: near-vertical segments and their tilt (rsdetect.lines)."""
    max_tilt_deg: float = 20.0
    min_length_frac: float = 0.1
    tilt_bins: int = 8
    tilted_deg: float = 1.0
    bands: int = 3
    lsd_scale: float = 0.8
    curve_min_length_frac: float = 0.3
    curve_window_px: int = 2


@dataclass(frozen=True)
class BaselineParams:
    pixel_size: int = 32
    lr_C: float = 1.0
    rf_trees: int = 200
    rf_max_depth: int = 12
    lines: LineParams = field(default_factory=LineParams)


@dataclass(frozen=True)
class EvaluateParams:
    target_precision: float = 0.95
    n_thresholds: int = 101


@dataclass(frozen=True)
class RegisterParams:
    model_name: str = "rs-detector"
    alias: str = "champion"
    metric: str = "roc_auc"


@dataclass(frozen=True)
class Params:
    seed: int = 0
    fetch: FetchParams = field(default_factory=FetchParams)
    synthesize: SynthParams = field(default_factory=SynthParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    external: ExternalParams = field(default_factory=ExternalParams)
    features: FeatureParams = field(default_factory=FeatureParams)
    train: TrainParams = field(default_factory=TrainParams)
    baselines: BaselineParams = field(default_factory=BaselineParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)


SOURCES = ("sample", "coco2017")
BACKBONES = ("small", "large")
KINDS = ("object", "pan", "vibration")
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and coercing types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown param (known: {', '.join(fields)})")
    values = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            values[name] = _build(type(default), value, key + ".")
        else:
            values[name] = _coerce(value, default, key)
    return cls(**values)


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Coerce a YAML value to the type of the field's default, or raise ConfigError naming `key`."""
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, tuple):
            lo, hi = (float(v) for v in value)
            if lo > hi:
                raise ConfigError(f"{key}: range [{lo}, {hi}] has min > max")
            return (lo, hi)
        if isinstance(default, dict):
            return {str(k): float(v) for k, v in dict(value).items()}
        if isinstance(default, str):
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a valid {type(default).__name__}") from None
    return value


def _check(p: Params) -> None:
    """Cross-field and range checks, each failing with the param's dotted name."""
    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")

    if p.fetch.source not in SOURCES:
        raise ConfigError(f"fetch.source: unknown source {p.fetch.source!r} (choose one of {', '.join(SOURCES)})")
    for key in ("n_images", "width", "height"):
        positive(f"fetch.sample.{key}", getattr(p.fetch.sample, key))
    for key in ("train_images", "workers", "timeout_s"):
        positive(f"fetch.coco2017.{key}", getattr(p.fetch.coco2017, key))
    if p.fetch.coco2017.test_images < 0:  # 0: no val2017 photos; test then comes from train2017 by test_fraction
        raise ConfigError(f"fetch.coco2017.test_images: must be >= 0, got {p.fetch.coco2017.test_images}")
    if p.fetch.coco2017.retries < 0:
        raise ConfigError(f"fetch.coco2017.retries: must be >= 0, got {p.fetch.coco2017.retries}")
    if not 0 <= p.fetch.coco2017.max_failed_fraction <= 1:
        raise ConfigError("fetch.coco2017.max_failed_fraction: must be within [0, 1]")
    s = p.synthesize
    positive("synthesize.size", s.size)
    if s.size < 32:
        raise ConfigError(f"synthesize.size: must be >= 32, got {s.size}")
    for key in ("val_fraction", "test_fraction"):
        if not 0 < getattr(s, key) < 0.5:
            raise ConfigError(f"synthesize.{key}: must be within (0, 0.5), got {getattr(s, key)}")
    unknown = sorted(set(s.kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"synthesize.kinds.{unknown[0]}: unknown kind (choose from {', '.join(KINDS)})")
    if any(w < 0 for w in s.kinds.values()) or sum(s.kinds.values()) <= 0:
        raise ConfigError("synthesize.kinds: weights must be >= 0 with a positive sum")
    for key in ("readout", "object_speed", "pan_speed", "vibration_amplitude", "vibration_cycles"):
        if getattr(s, key)[0] < 0:
            raise ConfigError(f"synthesize.{key}: must be >= 0, got {list(getattr(s, key))}")
    if not 1 <= s.jpeg_quality <= 100:
        raise ConfigError(f"synthesize.jpeg_quality: must be within [1, 100], got {s.jpeg_quality}")
    positive("synthesize.pairs_per_photo", s.pairs_per_photo)
    if s.workers < 0:
        raise ConfigError(f"synthesize.workers: must be >= 0, got {s.workers}")
    a = p.augment
    for key in ("brightness", "blur_sigma", "noise_sigma"):
        if np.min(getattr(a, key)) < 0:
            raise ConfigError(f"augment.{key}: must be >= 0, got {getattr(a, key)}")
    if not 0 <= a.contrast < 1 or not 0 <= a.blur_prob <= 1:
        raise ConfigError("augment.contrast must be within [0, 1) and augment.blur_prob within [0, 1]")
    if not 1 <= a.jpeg_quality[0] <= a.jpeg_quality[1] <= 100:
        raise ConfigError(f"augment.jpeg_quality: must be within [1, 100], got {list(a.jpeg_quality)}")
    pt = p.pretrain
    for key in ("epochs", "steps_per_epoch", "batch_size", "lr", "curriculum_scale", "val_pairs", "patience"):
        positive(f"pretrain.{key}", getattr(pt, key))
    for key, value in (("pretrain.batch_size", pt.batch_size), ("train.batch_size", p.train.batch_size)):
        if value % 2:
            raise ConfigError(f"{key}: must be even (each rolling-shutter image comes with its twin), got {value}")
    x = p.external
    positive("external.pairs_per_photo", x.pairs_per_photo)
    if not 1 <= x.jpeg_quality <= 100:
        raise ConfigError(f"external.jpeg_quality: must be within [1, 100], got {x.jpeg_quality}")
    if x.size < 32:
        raise ConfigError(f"external.size: must be >= 32, got {x.size}")
    if x.window < x.size:
        raise ConfigError(f"external.window: must be >= external.size ({x.size}), got {x.window}")
    if (x.window - x.size) % 2:  # the crop is central: an odd margin would shift it by half a pixel
        raise ConfigError(f"external.window: window - size must be even, got {x.window} - {x.size}")
    for key in ("translation_linear", "translation_quadratic"):
        if max(abs(v) for v in getattr(x, key)) > x.window:
            raise ConfigError(f"external.{key}: must stay within +-external.window ({x.window}) px, got {list(getattr(x, key))}")
    for key in ("rotation_linear", "rotation_quadratic"):
        if max(abs(v) for v in getattr(x, key)) > 45:
            raise ConfigError(f"external.{key}: must stay within +-45 degrees, got {list(getattr(x, key))}")
    if not 0 <= x.twin_time[0] <= x.twin_time[1] <= 1:
        raise ConfigError(f"external.twin_time: must be within [0, 1], got {list(x.twin_time)}")
    f = p.features
    if f.backbone not in BACKBONES:
        raise ConfigError(f"features.backbone: unknown backbone {f.backbone!r} (choose one of {', '.join(BACKBONES)})")
    for key in ("image_size", "batch_size", "gpu_max_batch", "calibration_images"):
        positive(f"features.{key}", getattr(f, key))
    if f.image_size < 32:
        raise ConfigError(f"features.image_size: must be >= 32, got {f.image_size}")
    if f.weights not in ("imagenet", "none", "pretrained") and not Path(f.weights).is_file():
        raise ConfigError(f"features.weights: weights file {f.weights!r} not found (use pretrained, imagenet, none or a path to a .weights.h5 file)")
    t = p.train
    for key in ("batch_size", "head_epochs", "head_lr", "finetune_lr", "patience", "steps_per_epoch", "curriculum_scale"):
        positive(f"train.{key}", getattr(t, key))
    for key in ("finetune_blocks", "finetune_epochs", "curriculum_epochs", "repeat"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(t, key)}")
    if not 0 <= t.dropout < 1:
        raise ConfigError(f"train.dropout: must be within [0, 1), got {t.dropout}")
    for key in ("pixel_size", "lr_C", "rf_trees", "rf_max_depth"):
        positive(f"baselines.{key}", getattr(p.baselines, key))
    _check_lines(p.baselines.lines)
    if not 0 < p.evaluate.target_precision <= 1:
        raise ConfigError(f"evaluate.target_precision: must be within (0, 1], got {p.evaluate.target_precision}")
    if p.evaluate.n_thresholds < 2:
        raise ConfigError(f"evaluate.n_thresholds: must be >= 2, got {p.evaluate.n_thresholds}")
    for key in ("model_name", "alias"):  # MLflow rejects an empty name with a traceback; say which param
        if not getattr(p.register, key).strip():
            raise ConfigError(f"register.{key}: must not be empty")
    if p.register.metric not in METRICS:
        raise ConfigError(f"register.metric: unknown metric {p.register.metric!r} (choose from {', '.join(METRICS)})")


def _check_lines(ln: LineParams) -> None:
    """Ranges of baselines.lines: a tilt window inside (0, 45) degrees keeps only near-vertical lines."""
    if not 0 < ln.max_tilt_deg < 45:
        raise ConfigError(f"baselines.lines.max_tilt_deg: must be within (0, 45), got {ln.max_tilt_deg}")
    if not 0 <= ln.tilted_deg < ln.max_tilt_deg:
        raise ConfigError(f"baselines.lines.tilted_deg: must be within [0, max_tilt_deg), got {ln.tilted_deg}")
    for key in ("min_length_frac", "curve_min_length_frac"):
        if not 0 < getattr(ln, key) <= 1:
            raise ConfigError(f"baselines.lines.{key}: must be within (0, 1], got {getattr(ln, key)}")
    if ln.tilt_bins < 2:
        raise ConfigError(f"baselines.lines.tilt_bins: must be >= 2, got {ln.tilt_bins}")
    if ln.bands < 3:  # second differences (curvature across bands) need three bands
        raise ConfigError(f"baselines.lines.bands: must be >= 3, got {ln.bands}")
    if not 0 < ln.lsd_scale <= 1:
        raise ConfigError(f"baselines.lines.lsd_scale: must be within (0, 1], got {ln.lsd_scale}")
    if ln.curve_window_px < 1:
        raise ConfigError(f"baselines.lines.curve_window_px: must be >= 1, got {ln.curve_window_px}")


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as read from params.yaml) into Params."""
    params = _build(Params, raw, "")
    _check(params)
    return params


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    from rsdetect.io import read_yaml

    return parse_params(read_yaml(path, "params file", ConfigError) or {})

