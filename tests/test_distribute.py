"""rsdetect.model.distribute: one device is the default strategy; two replicas train like one device on the same global
batch. TF's logical devices must be configured before TF initialises, so the checks run this file as a script in
a fresh Python (two logical CPU devices, GPUs hidden) and the tests read its JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # each test trains or starts TensorFlow devices in a fresh process

HERE = Path(__file__).resolve().parent
SIZE, BATCH, STEPS = 32, 8, 3  # tiny images, a global batch of 4 pairs, a few steps: the arithmetic, not learning
# Why this tolerance: both runs do the same float32 arithmetic in another order (two half-batch gradient sums
# then an all-reduce; BatchNorm variance as E[x^2] - E[x]^2 over the replicas' sums, not TF's two-pass moments),
# so they agree to rounding (float32 epsilon 1.2e-7), a little amplified by Adam (it divides by the gradient's
# RMS). Measured here: probabilities within 1.2e-7, validation loss within 1e-7, train loss equal. Without synced
# BatchNorm (each replica normalising by its own half) probabilities differ by 0.08 and validation loss by 0.08.
ATOL = 1e-4


def _run(sample_dir: str, out: str) -> None:
    """The subprocess: 2 logical CPUs, then the strategy choices and one short epoch on 1 and on 2 replicas."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, str(HERE))
    import keras

    from rsdetect.errors import RsdetectError
    from rsdetect.model import backbone as m
    from rsdetect.model.distribute import split_batch, strategy_for
    from rsdetect.model.training import build_classifier, fit_pairs, predict_arrays
    from rsdetect.synth.pairs import PairStream, fixed_pairs, load_photos

    from conftest import params_group

    res: dict = {}
    cpu_only = strategy_for("cpu", "train.devices")
    auto, two = strategy_for("auto", "train.devices"), strategy_for(2, "train.devices")
    res["cpu"] = [cpu_only is tf.distribute.get_strategy(), cpu_only.num_replicas_in_sync]
    res["auto"] = [auto is tf.distribute.get_strategy(), auto.num_replicas_in_sync, type(auto).__name__]
    res["count"] = [type(two).__name__, two.num_replicas_in_sync]
    try:
        strategy_for(3, "train.devices")
    except RsdetectError as err:
        res["three"] = str(err)
    x = np.arange(BATCH, dtype=np.float32).reshape(BATCH, 1)
    xs, ys = split_batch(two, x, np.tile(np.array([1.0, 0.0], np.float32), BATCH // 2))
    res["split"] = [[np.asarray(v).ravel().tolist() for v in two.experimental_local_results(t)] for t in (xs, ys)]
    try:
        split_batch(two, x[:6], np.zeros(6, np.float32))
    except RsdetectError as err:
        res["odd_split"] = str(err)

    p = params_group("synthesize", size=SIZE, min_person_area=15, pairs_per_photo=1)
    train, _ = load_photos(Path(sample_dir) / "instances.json", 5, p, "train")
    val_photos, _ = load_photos(Path(sample_dir) / "instances.json", 5, p, "val")
    val = fixed_pairs(val_photos, 5, p, 8, tag=999)

    def build() -> keras.Model:
        """A small backbone with the parts that matter here: convolutions and BatchNorm that trains."""
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Rescaling(1 / 127.5, -1)(inputs)
        for filters in (8, 16):
            x = keras.layers.Conv2D(filters, 3, strides=2, use_bias=False)(x)
            x = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(x))
        backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
        return build_classifier(backbone, 0.0)  # no dropout: its masks are drawn per replica

    keras.utils.set_random_seed(0)
    one = build()
    m.recalibrate_batchnorm(one.get_layer("backbone"), val[0])  # else random BatchNorm statistics: constant outputs
    with two.scope():
        model = build()
    model.set_weights(one.get_weights())
    for name, net in (("one", one), ("two", model)):
        stream = PairStream(train, 5, p, params_group("augment"), BATCH)
        history = fit_pairs(net, stream, 1, STEPS, 1e-2, 5, val)
        keys = ("loss", "accuracy", "val_loss", "val_accuracy", "val_roc_auc")
        res[name] = {"history": {k: history[0][k] for k in keys},
                     "prob": predict_arrays(net, val[0]).tolist(),
                     "synchronized": any(getattr(layer, "synchronized", False)
                                          for layer in net.get_layer("backbone").layers)}
    Path(out).write_text(json.dumps(res))


@pytest.fixture(scope="module")
def result(sample_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("distribute") / "result.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1",  # "a machine with no GPU", also on a GPU runner
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, str(sample_dir), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_auto_without_gpu_is_the_default_strategy(result):
    assert result["auto"] == [True, 1, "_DefaultDistributionStrategy"]  # even with 2 logical CPUs: CPU = one device
    assert result["cpu"] == [True, 1]
    assert result["count"] == ["MirroredStrategy", 2]  # a count takes logical CPUs where there is no GPU
    assert result["three"] == "train.devices: 3 devices asked, 2 CPU device(s) visible"


def test_each_replica_takes_its_slice_with_twins_together(result):
    (x0, x1), (y0, y1) = result["split"]
    assert x0 == [0, 1, 2, 3] and x1 == [4, 5, 6, 7]  # not the whole batch on every replica
    assert y0 == y1 == [1, 0, 1, 0]
    assert "does not split into 2 even per-replica batches" in result["odd_split"]


def test_two_replicas_train_like_one_device_on_the_same_global_batch(result):
    one, two = result["one"], result["two"]
    for key, value in one["history"].items():
        assert two["history"][key] == pytest.approx(value, abs=ATOL), key
    np.testing.assert_allclose(two["prob"], one["prob"], atol=ATOL)
    assert np.ptp(one["prob"]) > 10 * ATOL  # the comparison can fail: the predictions are not all the same
    assert not one["synchronized"] and not two["synchronized"]  # the flag is put back after training


def test_devices_param_is_validated():
    from rsdetect.config import ConfigError, parse_params

    from conftest import params_raw

    for bad in (0, "gpu", True, 1.5):
        with pytest.raises(ConfigError, match=r"^train\.devices: must be auto, cpu, multiworker or a device count"):
            parse_params(params_raw({"train": {"devices": bad}}))
    assert parse_params(params_raw({"pretrain": {"devices": 4}})).pretrain.devices == 4


if __name__ == "__main__":
    _run(sys.argv[1], sys.argv[2])
