"""The params schema: params.yaml parses; every bad value is one line naming the param; the schema has no
defaults (params.yaml is the only place numbers live)."""
import math

import pytest
from pydantic import BaseModel, ValidationError

from rsdetect.config import ConfigError, Params, load_params, parse_params
from rsdetect.errors import RsdetectError

from conftest import ROOT, params_group, params_raw


def test_repo_params_load_and_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.fetch.source == "sample"
    assert p.synthesize.size == p.features.image_size and p.evaluate.target_precision == 0.95
    assert isinstance(p.synthesize.readout, tuple) and p.synthesize.readout == (0.5, 1.0)
    assert p.synthesize.kinds == {"object": 0.5, "pan": 0.25, "vibration": 0.25}
    assert all(isinstance(v, float) for v in p.synthesize.kinds.values())
    assert isinstance(p.fetch.coco2017.timeout_s, float)  # a YAML int (30) for a float param becomes a float


def _without(path: str) -> dict:
    """params.yaml with the key at dotted `path` removed."""
    raw = params_raw()
    *parents, last = path.split(".")
    node = raw
    for name in parents:
        node = node[name]
    del node[last]
    return raw


@pytest.mark.parametrize("raw, key", [
    # the faults the hand-written checks let through, and the list
    (params_raw({"seed": -1}), "seed"),
    (params_raw({"synthesize": {"readout": [math.nan, 1.0]}}), "synthesize.readout"),
    (params_raw({"synthesize": {"object_speed": [12, math.inf]}}), "synthesize.object_speed"),
    (params_raw({"augment": {"brightness": math.nan}}), "augment.brightness"),
    (params_raw({"pretrain": {"epochs": math.inf}}), "pretrain.epochs"),
    (params_raw({"train": {"head_epochs": 60.5}}), "train.head_epochs"),
    (params_raw({"train": {"head_lr": "0.003"}}), "train.head_lr"),
    (params_raw({"train": {"deterministic": "yes"}}), "train.deterministic"),
    (_without("train"), "train"),
    (_without("fetch.coco2017"), "fetch.coco2017"),
    (_without("train.patience"), "train.patience"),
    (_without("baselines.lines.bands"), "baselines.lines.bands"),
    (params_raw({"train": {"learning_rate": 0.1}}), "train.learning_rate"),
    (params_raw({"extra_group": {"a": 1}}), "extra_group"),
    (params_raw({"synthesize": {"size": 96}}), "synthesize.size"),
    (params_raw({"train": {"batch_size": 33}}), "train.batch_size"),
    (params_raw({"pretrain": {"batch_size": 31}}), "pretrain.batch_size"),
    (params_raw({"register": {"model_name": ""}}), "register.model_name"),
    # kept from the hand-written checks
    (params_raw({"fetch": {"source": "flickr"}}), "fetch.source"),
    (params_raw({"fetch": {"sample": {"n_images": -3}}}), "fetch.sample.n_images"),
    (params_raw({"synthesize": {"size": -1}}), "synthesize.size"),
    (params_raw({"synthesize": {"readout": [1.0, 0.5]}}), "synthesize.readout"),
    (params_raw({"synthesize": {"kinds": {"warp": 1}}}), "synthesize.kinds.warp"),
    (params_raw({"synthesize": {"kinds": {"object": 0, "pan": 0, "vibration": 0}}}), "synthesize.kinds"),
    (params_raw({"features": {"weights": "/nonexistent/mnv3.weights.h5"}}), "features.weights"),
    (params_raw({"features": {"image_size": "big"}}), "features.image_size"),
    (params_raw({"train": {"batch_size": 0}}), "train.batch_size"),
    (params_raw({"register": {"metric": "auc"}}), "register.metric"),
    (params_raw({"register": {"model_name": None}}), "register.model_name"),
    (params_raw({"register": {"alias": "  "}}), "register.alias"),
    (params_raw({"images": {"max_pixels": 10}}), "images.max_pixels"),
    (params_raw({"images": {"max_pixels": 10**9}}), "images.max_pixels"),
    (params_raw({"baselines": {"lines": {"max_tilt_deg": 60}}}), "baselines.lines.max_tilt_deg"),
    (params_raw({"baselines": {"lines": {"bands": 2}}}), "baselines.lines.bands"),
    (params_raw({"baselines": {"lines": {"min_length_frac": 0}}}), "baselines.lines.min_length_frac"),
    (params_raw({"baselines": {"lines": {"tilted_deg": 30}}}), "baselines.lines.tilted_deg"),
    (params_raw({"baselines": {"lines": {"angle": 3}}}), "baselines.lines.angle"),
    (params_raw({"video": {"analysis": {"flicker_hz": []}}}), "video.analysis.flicker_hz"),
    (params_raw({"video": {"analysis": {"flicker_hz": [100, -120]}}}), "video.analysis.flicker_hz"),
    (params_raw({"video": {"analysis": {"flicker_min_drift": 0.6}}}), "video.analysis.flicker_min_drift"),
    (params_raw({"video": {"analysis": {"flicker_every": 0}}}), "video.analysis.flicker_every"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_params_name_the_param_in_one_line(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert isinstance(err.value, RsdetectError)
    assert msg.startswith(key + ":") or msg.startswith(key + "."), msg
    assert "\n" not in msg and len(msg) < 200, msg


@pytest.mark.parametrize("raw, line", [
    (params_raw({"seed": -1}), "seed: Input should be greater than or equal to 0"),
    (_without("train"), "train: Field required"),
    (params_raw({"train": {"learning_rate": 0.1}}), "train.learning_rate: Extra inputs are not permitted"),
    (params_raw({"synthesize": {"readout": [1.0, 0.5]}}), "synthesize.readout: range [1.0, 0.5] has min > max"),
    (params_raw({"synthesize": {"size": 96}}), "synthesize.size: 96 must equal features.image_size (160)"),
])
def test_error_format_is_dotted_param_colon_why(raw, line):
    """The exact form of the line: `<dotted.param>: <why>`, pydantic's location and message."""
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert str(err.value) == line


def test_not_a_mapping_is_one_line():
    with pytest.raises(ConfigError, match=r"^params: "):
        parse_params(None)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_empty_params_file_names_the_first_missing_group(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=r"^fetch: Field required$"):
        load_params(tmp_path / "params.yaml")


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every model nested in its fields."""
    found = [model]
    for f in model.model_fields.values():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            found += _models(f.annotation)
    return found


def test_schema_has_no_defaults():
    """Every field of every group is required: a value can only come from params.yaml."""
    models = _models(Params)
    # Params, its 13 groups, fetch.sample, fetch.coco2017, baselines.lines, video.clips, video.analysis
    assert len(models) == 19
    optional = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items() if not f.is_required()]
    assert optional == []


def test_groups_are_frozen_and_reject_unknown_keys():
    s = params_group("synthesize")
    with pytest.raises(ValidationError, match="frozen"):
        s.size = 64
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        type(s).model_validate({**s.model_dump(), "colour": 1})


def test_params_group_overrides_are_validated():
    assert params_group("synthesize", size=96).size == 96
    assert params_group("baselines.lines", bands=4).bands == 4
    with pytest.raises(ValidationError, match="size"):
        params_group("synthesize", size=-1)


def test_serving_params_round_trip_and_bad_ones_name_the_file():
    # what rsdetect export saves beside a model and scan reads back on a host without params.yaml
    import json

    from rsdetect.config import load_params, parse_serving, serving_params

    params = load_params(ROOT / "params.yaml")
    saved = json.loads(json.dumps(serving_params(params)))  # through JSON, as the sidecar keeps them
    assert parse_serving(saved, "m.json") == (params.shear, params.video.analysis)
    for bad, line in [({**saved, "shear": 3}, "m.json: shear: Input should be a valid dictionary"),
                      ({"shear": saved["shear"]}, "m.json: video_analysis: Input should be a valid dictionary"),
                      ({**saved, "video_analysis": {**saved["video_analysis"], "bands": 0}},
                       "m.json: video_analysis.bands: Input should be greater than or equal to 3"),
                      ([], "m.json: serving params must be a mapping, got list")]:
        with pytest.raises(ConfigError) as err:
            parse_serving(bad, "m.json")
        assert str(err.value).startswith(line) and "\n" not in str(err.value), str(err.value)

