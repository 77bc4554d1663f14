"""params.yaml read once into typed, validated objects; bad values stop with one line naming the param.

params.yaml is the only place numbers live: the schema below says what a value may be (type, bounds, choices,
cross-field rules) but never what it is, so every field is required and a group or key missing from params.yaml
is an error naming it, not a silent default. Any bad value raises ConfigError with one line,
`<dotted.param>: <why>` (the first error pydantic finds).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rsdetect.errors import RsdetectError
from rsdetect.limits import MIN_SIDE, set_max_pixels

PILLOW_HEADER_CEILING = 2 * 89_478_485  # 2 x PIL.Image.MAX_IMAGE_PIXELS: above it Pillow refuses without a size


class ConfigError(RsdetectError):
    """A bad value in params.yaml."""


Source = Literal["sample", "coco2017"]
Backbone = Literal["small", "large"]
Kind = Literal["object", "pan", "vibration"]
Metric = Literal["accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"]
SOURCES: tuple[str, ...] = get_args(Source)
BACKBONES: tuple[str, ...] = get_args(Backbone)
KINDS: tuple[Kind, ...] = get_args(Kind)
METRICS: tuple[str, ...] = get_args(Metric)
WEIGHTS_CHOICES = ("imagenet", "none", "pretrained")


def _param_error(field: str, message: str) -> PydanticCustomError:
    """An error of a cross-field rule, raised in a model validator: `field` (dotted, relative to the model the
    validator belongs to) is appended to the error's location, so the one line names the param, not the group."""
    return PydanticCustomError("param", "{message}", {"field": field, "message": message})


# Strict scalars: YAML must not coerce "12" into 12, true into 1, or 3.5 / .inf into an int. A float field still
# takes a YAML int (12 -> 12.0), but never .nan / .inf: they pass every comparison test and crash much later.
def Int(**bounds: int) -> Any:
    """An int (no bool, no float) within `bounds` (Field's gt / ge / lt / le)."""
    return Annotated[int, Field(strict=True, **bounds)]


def Float(**bounds: float) -> Any:
    """A finite float (a YAML int is taken, a string or bool is not) within `bounds`."""
    return Annotated[float, Field(strict=True, allow_inf_nan=False, **bounds)]


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    """A range is drawn from uniformly: its low end must not exceed its high end."""
    lo, hi = value
    if lo > hi:
        raise PydanticCustomError("range", "range [{lo}, {hi}] has min > max", {"lo": lo, "hi": hi})
    return value


def Range(**bounds: float) -> Any:
    """A two-element [lo, hi] range of finite floats, each within `bounds`, with lo <= hi; a tuple in Python."""
    end = Float(**bounds)
    return Annotated[tuple[end, end], AfterValidator(_ordered)]


def _not_blank(value: str) -> str:
    """MLflow rejects an empty name with a traceback; say which param instead."""
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


NonBlank = Annotated[StrictStr, AfterValidator(_not_blank)]


def _weights_choice(value: str) -> str:
    """features.weights: a named choice, or a weights file that exists (checked now, not after an hour of work)."""
    if value not in WEIGHTS_CHOICES and not Path(value).is_file():
        raise PydanticCustomError("weights", "weights file {value!r} not found (use pretrained, imagenet, none or a "
                                             "path to a .weights.h5 file)", {"value": value})
    return value


class _Group(BaseModel):
    """A params group: unknown keys are errors (a typo must not be ignored), values are immutable."""
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleParams(_Group):
    """fetch.sample: the embedded offline dataset."""
    n_images: Int(gt=0)
    width: Int(gt=0)
    height: Int(gt=0)
    drawn: StrictBool
    real: StrictBool


class CocoParams(_Group):
    """fetch.coco2017: the download (annotations checked by md5 and size when those are set)."""
    annotations_url: StrictStr
    annotations_md5: StrictStr              # "" skips the check
    annotations_size: Int(ge=0)             # 0 skips the check
    image_base_url: StrictStr
    train_images: Int(gt=0)
    test_images: Int(ge=0)                  # 0: no val2017 photos; test then comes from train2017 by test_fraction
    min_person_area: Float(ge=0)
    workers: Int(gt=0)
    timeout_s: Float(gt=0)
    retries: Int(ge=0)                      # further tries of a failed download (0: one try)
    max_failed_fraction: Float(ge=0, le=1)  # more of the selected images failing stops the fetch (0: any one)


class FetchParams(_Group):
    source: Source
    sample: SampleParams
    coco2017: CocoParams


class SynthParams(_Group):
    size: Int(ge=32)
    val_fraction: Float(gt=0, lt=0.5)
    test_fraction: Float(gt=0, lt=0.5)
    min_person_area: Float(ge=0)
    readout: Range(ge=0)
    kinds: dict[Kind, Float(ge=0)]
    object_speed: Range(ge=0)
    object_turn: Range()
    pan_speed: Range(ge=0)
    pan_direction_jitter: Float(ge=0, le=1)  # radians; up to ~57 degrees keeps a pan a sideways motion
    vibration_amplitude: Range(ge=0)
    vibration_cycles: Range(ge=0)
    min_visible_px: Float(ge=0)
    jpeg_quality: Int(ge=1, le=100)
    pairs_per_photo: Int(ge=1)
    workers: Int(ge=0)                      # 0 = all cores

    @model_validator(mode="after")
    def _some_kind(self) -> SynthParams:
        if sum(self.kinds.values()) <= 0:  # nothing to draw a distortion kind from
            raise _param_error("kinds", "weights must have a positive sum")
        return self


class AugmentParams(_Group):
    flip: StrictBool
    brightness: Float(ge=0)
    contrast: Float(ge=0, lt=1)
    blur_prob: Float(ge=0, le=1)
    blur_sigma: Range(ge=0)
    noise_sigma: Range(ge=0)
    jpeg_quality: Range(ge=1, le=100)


def _even_batch(value: int) -> int:
    """Each rolling-shutter image comes with its global-shutter twin in the same batch."""
    if value % 2:
        raise PydanticCustomError("odd", "must be even (each rolling-shutter image comes with its twin), got {value}",
                                  {"value": value})
    return value


EvenBatch = Annotated[Int(gt=0), AfterValidator(_even_batch)]


DEVICE_CHOICES = ("auto", "cpu", "multiworker")


def _devices(value: Any) -> str | int:
    """Which devices train (rsdetect.model.distribute.strategy_for): a named choice or a count >= 1 (a bool is not
    one)."""
    if (isinstance(value, str) and value in DEVICE_CHOICES) or (type(value) is int and value >= 1):
        return value
    raise PydanticCustomError("devices", "must be auto, cpu, multiworker or a device count >= 1, got {value!r}",
                              {"value": value})


Devices = Annotated[Any, AfterValidator(_devices)]
# A dropout rate: below 1, which would drop every unit and leave the classifier nothing to read.
Dropout = Float(ge=0, lt=1)


class PretrainParams(_Group):
    epochs: Int(gt=0)
    steps_per_epoch: Int(gt=0)
    batch_size: EvenBatch                   # per replica: the global batch is batch_size x replicas
    devices: Devices
    lr: Float(gt=0)
    lr_end: Float(gt=0, le=1)               # the last epoch's rate as a fraction of lr: cosine decay (1 = constant)
    curriculum_epochs: Int(ge=0)            # motion magnitudes fall linearly from curriculum_scale x to 1x over these
    curriculum_scale: Float(gt=0)           # epochs (0: no curriculum); at 0x a distorted image would equal its twin
    val_pairs: Int(gt=0)
    patience: Int(gt=0)
    dropout: Dropout


class ExternalParams(_Group):
    """The independent-recipe test set (Rengarajan et al. 2017); ranges are uniform draws, see
    rsdetect.synth.rengarajan."""
    pairs_per_photo: Int(gt=0)
    jpeg_quality: Int(ge=1, le=100)
    window: Int(ge=32)                      # centre square the photo is resized to (short side)
    size: Int(ge=32)                        # central crop written out
    translation_linear: Range()             # a1, px: tx(y) = a1*y + a2*y^2, y in [0, 1]
    translation_quadratic: Range()          # a2, px
    rotation_linear: Range(ge=-45, le=45)   # b1, degrees: theta(y) = b1*y + b2*y^2
    rotation_quadratic: Range(ge=-45, le=45)  # b2, degrees
    twin_time: Range(ge=0, le=1)            # instant of the twin's rigid pose, in [0, 1]

    @model_validator(mode="after")
    def _crop_fits(self) -> ExternalParams:
        if self.window < self.size:
            raise _param_error("window", f"must be >= external.size ({self.size}), got {self.window}")
        if (self.window - self.size) % 2:  # the crop is central: an odd margin would shift it by half a pixel
            raise _param_error("window", f"window - size must be even, got {self.window} - {self.size}")
        for key in ("translation_linear", "translation_quadratic"):
            if max(abs(v) for v in getattr(self, key)) > self.window:
                raise _param_error(key, f"must stay within +-external.window ({self.window}) px, "
                                        f"got {list(getattr(self, key))}")
        return self


class FeatureParams(_Group):
    backbone: Backbone
    image_size: Int(ge=32)
    weights: Annotated[StrictStr, AfterValidator(_weights_choice)]
    batch_size: Int(gt=0)
    gpu_max_batch: Int(gt=0)
    calibration_images: Int(gt=0)


class TrainParams(_Group):
    batch_size: EvenBatch                   # per replica: the global batch is batch_size x replicas
    devices: Devices
    head_epochs: Int(gt=0)
    head_lr: Float(gt=0)
    head_patience: Int(gt=0)
    dropout: Dropout
    finetune_blocks: Int(ge=0)
    finetune_epochs: Int(ge=0)
    finetune_lr: Float(gt=0)
    finetune_lr_end: Float(gt=0, le=1)      # as pretrain.lr_end, over finetune_epochs
    steps_per_epoch: Int(gt=0)
    curriculum_epochs: Int(ge=0)            # as pretrain.curriculum_epochs and curriculum_scale
    curriculum_scale: Float(gt=0)
    repeat: Int(ge=0)                       # 0: the seed as given; N: the same data, another draw of weights and pairs
    patience: Int(gt=0)
    deterministic: StrictBool


class LineParams(_Group):
    """The straight-line (physics) baseline: near-vertical segments and their tilt (rsdetect.evaluation.lines)."""
    max_tilt_deg: Float(gt=0, lt=45)        # a window inside (0, 45) degrees keeps only near-vertical lines
    min_length_frac: Float(gt=0, le=1)
    tilt_bins: Int(ge=2)
    tilted_deg: Float(ge=0)
    bands: Int(ge=3)                        # second differences (curvature across bands) need three bands
    lsd_scale: Float(gt=0, le=1)
    curve_min_length_frac: Float(gt=0, le=1)
    curve_window_px: Int(ge=1)

    @model_validator(mode="after")
    def _tilted_inside_window(self) -> LineParams:
        if self.tilted_deg >= self.max_tilt_deg:
            raise _param_error("tilted_deg", f"must be within [0, max_tilt_deg), got {self.tilted_deg}")
        return self


class BaselineParams(_Group):
    pixel_size: Int(gt=0)
    lr_C: Float(gt=0)
    rf_trees: Int(gt=0)
    rf_max_depth: Int(gt=0)
    lines: LineParams


class ShearParams(_Group):
    """The shear estimate handed to correction (rsdetect.serve.shear): gradient orientation of near-vertical edges."""
    max_tilt_deg: Float(gt=0, lt=45)        # edge pixels within this of vertical vote
    gradient_quantile: Float(ge=0, lt=1)    # ... and only the strongest (gradient magnitude above this quantile)


class ImageParams(_Group):
    """Limits of every image decoded (rsdetect.limits): pipeline photos, scanned images, video frames."""
    # An image is decoded only after its header's width x height passes this. The floor is the smallest image
    # kept (limits.MIN_SIDE squared); the ceiling is where Pillow, which reads the headers, stops reporting sizes.
    max_pixels: Int(ge=MIN_SIDE * MIN_SIDE, le=PILLOW_HEADER_CEILING)


class EvaluateParams(_Group):
    target_precision: Float(gt=0, le=1)
    n_thresholds: Int(ge=2)


class RegisterParams(_Group):
    model_name: NonBlank
    alias: NonBlank
    metric: Metric
    claim_tolerance: Float(ge=0, le=1)


class VideoClipParams(_Group):
    """video.clips: rolling-shutter / global-shutter twin clips rendered from photos (rsdetect.synth.clips)."""
    clips_per_kind: Int(gt=0)               # RS clips of each kind (each with its GS twin)
    frames: Int(ge=8)                       # frames per clip
    fps: Range(gt=0)                        # frame rate drawn from this
    readout_ms: Range(gt=0)                 # whole-frame readout drawn from this (ms)
    frame_fraction: Float(gt=0.3, le=1)     # output frame = this fraction of the photo's width and height (the rest:
                                            # room for the camera to travel, so no border is ever invented)
    vibration_px: Range(gt=0)               # shake amplitude, native px
    vibration_hz: Range(gt=0)
    roll_px: Range(gt=0)                    # roll clips: a shaking mount's roll at the crop's side edges, px
    pan_px: Range(gt=0)                     # pan's peak speed, native px per frame
    pan_ramp_frames: Range(ge=1)            # frames to reach the peak speed (and to stop)
    still_frames: Int(ge=1)                 # still frames before a pan starts: the reference its shear shows against
    person_px: Range(gt=0)                  # person's speed, native px per frame
    min_person_area: Float(ge=0)            # px^2 of the photo: smaller people are not moved
    noise_sigma: Range(ge=0)                # Gaussian sensor noise per frame, levels
    jpeg_quality: Range(ge=1, le=100)       # every frame re-encoded at a quality drawn from this
    flicker_hz: Annotated[tuple[Float(gt=0), ...], Field(min_length=1)]  # flicker clips: lamps' flicker, one drawn
    flicker_depth: Range(gt=0, le=1)        # ... dimming to 1 - this of their peak
    flicker_exposure_ms: Range(gt=0)        # ... each row exposed this long


class VideoAnalysisParams(_Group):
    """video.analysis: per-frame motion, readout estimate and rolling-shutter evidence (rsdetect.video)."""
    work_width: Int(ge=32)                  # frames are measured at this width (flow cost ~ pixels)
    precise_max_shrink: Int(ge=1)           # where the camera moves: at least 1/this of the native width
    flow_preset: Literal["ultrafast", "fast", "medium"]  # OpenCV DIS optical flow preset where the camera moves
    quick_preset: Literal["ultrafast", "fast", "medium"]  # ... and the first pass on every frame that is not static
    bands: Int(ge=3)                        # horizontal bands: the row dependence of the camera's motion
    static_level: Float(gt=0)               # grey levels: a pixel changed by more than this moved ...
    static_fraction: Float(ge=0, lt=1)      # ... and a frame with at most this fraction of such pixels is static
    static_after_still_frames: Int(ge=0)    # ... once the camera was measured still for this many frames in a row
    mover_work_px: Float(gt=0)              # px/frame at work_width off the band's background motion: a moving pixel
    min_region_fraction: Float(gt=0, lt=1)  # a moving region covers at least this fraction of the frame
    camera_work_px: Float(ge=0)             # px/frame at work_width of background motion: the camera itself moves
                                            # (flow's precision is set by the working image, not the native one)
    roll_dead_work_px: Float(ge=0)          # work px at the top and bottom rows: a roll or zoom under it is none
    roll_camera_work_px: Float(ge=0)        # a camera whose median roll (top and bottom rows) is over it rolls
    lighting_explains: Float(gt=0, le=1)    # a row gain (flicker, exposure) is taken out where it explains this much
                                            # of the pixels that changed
    overlay_held: Float(gt=0, lt=1)         # a flow sample under this share of the camera's speed was held still ...
    overlay_share: Float(gt=0, le=1)        # ... and one held in this share of the frames of camera motion is an
                                            # overlay (an on-screen clock), not the scene
    typical_readout_ms: Float(gt=0)         # readout unknown: movers ranked by the shear a typical readout gives ...
    typical_readout_sigma: Float(gt=0)      # ... log-normal around it with this log-sd
    nodes_per_frame: Int(ge=1)              # camera trajectory knots per frame interval (sub-frame timing)
    smoothness: Float(ge=0)                 # penalty on the trajectory's second differences (readout search)
    shear_smoothness: Float(ge=0)           # ... where the readout is given, for a frame's shear: at 25 frames/s,
                                            # x (fps / 25)^2, at most smoothness
    readout_max: Float(gt=0, le=2)          # readouts searched: 0 .. this, in frame intervals
    readout_steps: Int(ge=3)
    min_evidence_frames: Int(ge=1)          # frames with camera motion an estimate must rest on
    evidence_margin_frames: Int(ge=0)       # ... read off them and this many frames on each side
    max_ci_frames: Float(gt=0)              # a 95% interval wider than this (frame intervals): readout unknown
    zero_readout_ms: Float(ge=0)            # ... as is one reaching 0 around an estimate above this
    min_readout_fps: Float(ge=0)            # below this frame rate camera motion gives no readout estimate
    flicker_hz: Annotated[tuple[Float(gt=0), ...], Field(min_length=1)]  # lights' flicker (twice the mains) ...
    flicker_min_drift: Float(gt=0, le=0.5)  # ... whose bands drift at least this (cycles a frame) can show ...
    flicker_min_explained: Float(gt=0, le=1)  # ... and explain this share of the row gains: a readout (flicker.py)
    flicker_every: Int(ge=1)                # faint flicker: a still camera's row gains sampled every this many frames
    flag_shear_px: Float(gt=0)              # rs_shear_px at which a frame is flagged (probability 0.5)
    shear_scale_px: Float(gt=0)             # logistic width of the probability around flag_shear_px
    row_z_flag: Float(gt=0)                 # readout unknown: row-dependence z at which a frame is flagged
    lag_frames: Int(ge=1)                   # streaming: a frame's result waits for this many later frames
    window_frames: Int(ge=8)                # streaming: frames of band evidence kept for the readout estimate
    refit_frames: Int(ge=1)                 # streaming: frames of camera motion between two readout estimates


class VideoParams(_Group):
    """video: the video stage (clips rendered, analysed with the readout not told and told)."""
    clips: VideoClipParams
    analysis: VideoAnalysisParams


# The group named `register` shadows ABCMeta.register on the class (pydantic warns); on an instance the field
# wins, and nothing in the project registers virtual subclasses of Params, so the warning is noise.
warnings.filterwarnings("ignore", message='Field name "register" in "Params" shadows', category=UserWarning)


class Params(_Group):
    """All of params.yaml."""
    seed: Int(ge=0)                         # numpy's SeedSequence rejects a negative seed
    fetch: FetchParams
    synthesize: SynthParams
    augment: AugmentParams
    pretrain: PretrainParams
    external: ExternalParams
    features: FeatureParams
    train: TrainParams
    baselines: BaselineParams
    shear: ShearParams
    evaluate: EvaluateParams
    images: ImageParams
    video: VideoParams
    # an explicit Field: a bare annotation would take ABCMeta.register as its default
    register: RegisterParams = Field()

    @model_validator(mode="after")
    def _same_image_size(self) -> Params:
        # synthesis writes the images the backbone reads as they are: no resampling between the two
        if self.synthesize.size != self.features.image_size:
            raise _param_error("synthesize.size", f"{self.synthesize.size} must equal features.image_size "
                                                  f"({self.features.image_size})")
        return self


G = TypeVar("G", bound=BaseModel)


def serving_params(params: Params) -> dict[str, Any]:
    """The groups `scan` and `watch` read (shear, video.analysis) as a plain mapping: what an exported or registered
    model carries, so a camera host without params.yaml measures video as the model was evaluated with."""
    return serving_mapping(params.shear, params.video.analysis)


def serving_mapping(shear: ShearParams, analysis: VideoAnalysisParams) -> dict[str, Any]:
    """The two serving groups as `serving_params` maps them (parse_serving reads them back)."""
    return {"shear": shear.model_dump(mode="json"), "video_analysis": analysis.model_dump(mode="json")}


# Params added to the serving groups since models first carried them, each with the value that does what a model
# saved before it did: a camera host that upgrades rsdetect keeps scanning with a model exported or registered
# earlier (the strict schema would refuse its mapping for the missing param) and measures as it was evaluated.
SERVING_ADDED: dict[str, dict[str, Any]] = {
    # 2026-12-07; before them no camera was taken to roll, every frame rate's camera motion gave readouts, a frame's
    # shear was read off the trajectory the readout search fits (smoothness), and the readout off every frame (not
    # exactly as before: its interval's noise is then over every frame of the window, where it was over those measured)
    "video_analysis": {"roll_camera_work_px": 1e9, "min_readout_fps": 0.0, "shear_smoothness": 1e9,
                       "evidence_margin_frames": 10**9},
}


def parse_serving(raw: Any, where: str) -> tuple[ShearParams, VideoAnalysisParams]:
    """`serving_params`' mapping back, validated as params.yaml is (a param it predates: SERVING_ADDED's value);
    ConfigError `<where>: <key>.<param>: <why>`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: serving params must be a mapping, got {type(raw).__name__}")
    groups: list[Any] = []
    for key, model in (("shear", ShearParams), ("video_analysis", VideoAnalysisParams)):
        group = raw.get(key)
        if isinstance(group, dict):
            group = {**SERVING_ADDED.get(key, {}), **group}
        try:
            groups.append(model.model_validate(group))
        except ValidationError as exc:
            line = one_line(exc)  # 'params: ...' where the group itself is wrong (missing, not a mapping)
            raise ConfigError(f"{where}: {key}{line[len('params'):] if line.startswith('params:') else '.' + line}"
                              ) from None
    return groups[0], groups[1]


def updated(group: G, **changes: Any) -> G:
    """`group` with `changes`, validated like params.yaml (model_copy(update=...) alone would take any value):
    for benchmarks and tests that vary a param of the real params.yaml."""
    return type(group).model_validate({**group.model_dump(), **changes})


def one_line(err: ValidationError) -> str:
    """The first error of a ValidationError as `<dotted.param>: <why>`.

    pydantic's location is the path into the mapping; a cross-field rule adds its param (ctx "field"); "[key]"
    (pydantic's marker for a bad dict key) is dropped so an unknown kind reads `synthesize.kinds.warp: ...`.
    """
    first = err.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"] if part != "[key]"]
    if first["type"] == "param":
        loc += first["ctx"]["field"].split(".")
    return f"{'.'.join(loc) or 'params'}: {first['msg']}"


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from params.yaml) into Params, or raise ConfigError in one line."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(one_line(err)) from None


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml; its images.max_pixels becomes this process's decode limit (rsdetect.limits),
    so every image read after loading the params is bounded by it without each caller passing it on."""
    from rsdetect.io import read_yaml

    params = parse_params(read_yaml(path, "params file", ConfigError))
    set_max_pixels(params.images.max_pixels)
    return params
