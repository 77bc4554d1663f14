import pytest

from rsdetect.config import ConfigError, load_params, parse_params

from conftest import ROOT


def test_repo_params_load_and_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.fetch.source == "sample"
    assert p.synthesize.size > 0 and p.evaluate.target_precision == 0.95


@pytest.mark.parametrize("raw, key", [
    ({"fetch": {"source": "flickr"}}, "fetch.source"),
    ({"fetch": {"sample": {"n_images": -3}}}, "fetch.sample.n_images"),
    ({"synthesize": {"size": -1}}, "synthesize.size"),
    ({"synthesize": {"readout": [1.0, 0.5]}}, "synthesize.readout"),
    ({"synthesize": {"kinds": {"warp": 1}}}, "synthesize.kinds.warp"),
    ({"features": {"weights": "/nonexistent/mnv3.weights.h5"}}, "features.weights"),
    ({"features": {"image_size": "big"}}, "features.image_size"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"train": {"learning_rate": 0.1}}, "train.learning_rate"),
    ({"register": {"metric": "auc"}}, "register.metric"),
    ({"register": {"model_name": ""}}, "register.model_name"),
    ({"register": {"model_name": None}}, "register.model_name"),
    ({"register": {"alias": "  "}}, "register.alias"),
    ({"baselines": {"lines": {"max_tilt_deg": 60}}}, "baselines.lines.max_tilt_deg"),
    ({"baselines": {"lines": {"bands": 2}}}, "baselines.lines.bands"),
    ({"baselines": {"lines": {"min_length_frac": 0}}}, "baselines.lines.min_length_frac"),
    ({"baselines": {"lines": {"tilted_deg": 30}}}, "baselines.lines.tilted_deg"),
    ({"baselines": {"lines": {"angle": 3}}}, "baselines.lines.angle"),
])
def test_bad_params_name_the_param_in_one_line(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert msg.startswith(key) and "\n" not in msg


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
