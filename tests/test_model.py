"""rsdetect.model.backbone and rsdetect.model.head on CPU at 64 px: the BatchNorm pitfall of a random backbone, cached
features, the head,
assembly, fine-tuning, weight loading errors and determinism."""
from __future__ import annotations

import socket
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from rsdetect.errors import RsdetectError  # noqa: E402
from rsdetect.model import backbone as m  # noqa: E402
from rsdetect.model import head as hd  # noqa: E402

S = 64
N_FEATURES = 960

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def patterns(n: int, size: int = S, seed: int = 0) -> np.ndarray:
    """n clearly different RGB uint8 images: stripes, checkerboards, gradients and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        kind = i % 4
        period = 3 + 2 * i
        if kind == 0:
            base = ((xx // period) % 2) * 255
        elif kind == 1:
            base = ((yy // period) % 2) * 255
        elif kind == 2:
            base = (((xx // period) + (yy // period)) % 2) * 255
        else:
            base = (xx + yy) * 255 / (2 * size)
        noise = rng.normal(0, 20 + 5 * i, (size, size, 3))
        tint = rng.uniform(0.3, 1.0, 3)
        out[i] = np.clip(base[..., None] * tint + noise, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return patterns(8).astype(np.float32)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[str]:
    """10 JPEG files (RGB patterns), two of them larger squares to exercise the resize (training images are square)."""
    d = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i, img in enumerate(patterns(10, seed=1)):
        if i in (3, 7):
            img = cv2.resize(img, (96, 96))
        p = d / f"{i}.jpg"
        assert cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def calibrated(images) -> keras.Model:
    keras.utils.set_random_seed(0)
    backbone = m.build_backbone(S, "none")
    m.recalibrate_batchnorm(backbone, images)
    return backbone


def test_random_backbone_is_constant_until_batchnorm_is_recalibrated(images):
    keras.utils.set_random_seed(1)
    backbone = m.build_backbone(S, "none")
    assert backbone.output_shape == (None, N_FEATURES)
    head = hd.build_head(N_FEATURES, 0.2)
    assert np.ptp(images.reshape(8, -1).mean(1)) > 10  # the inputs really differ
    before = head(backbone(images, training=False)).numpy().reshape(-1)
    assert before.std() < 1e-6  # the measured pitfall: a fresh weights=None MobileNetV3 is constant
    momenta = [bn.momentum for bn in backbone.layers if isinstance(bn, keras.layers.BatchNormalization)]
    m.recalibrate_batchnorm(backbone, images)
    after = head(backbone(images, training=False)).numpy().reshape(-1)
    assert after.std() > 1e-4
    assert len(np.unique(np.round(after, 6))) == 8
    # momenta are restored after the one calibration pass
    assert [bn.momentum for bn in backbone.layers if isinstance(bn, keras.layers.BatchNormalization)] == momenta


def test_extract_features_shape_and_order(calibrated, jpegs):
    feats = m.extract_features(calibrated, jpegs, S, 4)
    assert feats.shape == (len(jpegs), N_FEATURES) and feats.dtype == np.float32
    assert feats.std(axis=0).max() > 0
    perm = np.random.default_rng(3).permutation(len(jpegs))
    shuffled = m.extract_features(calibrated, [jpegs[i] for i in perm], S, 3)
    # batches of 3 vs 4: CPU kernels block differently by batch size, ~1e-5 apart on features near 0
    np.testing.assert_allclose(shuffled, feats[perm], rtol=1e-4, atol=5e-5)
    # the rows really are different, so the order check is meaningful
    assert np.abs(feats[perm] - feats).max() > 1e-3
    # load_images + a direct call gives the same features
    direct = calibrated(m.load_images(jpegs[:4], S), training=False).numpy()
    np.testing.assert_allclose(direct, feats[:4], rtol=1e-3, atol=1e-4)


def test_extract_features_of_no_paths_is_empty(calibrated):
    assert m.extract_features(calibrated, [], S, 4).shape == (0, N_FEATURES)


def test_assemble_equals_head_on_standardized_features(calibrated, images):
    keras.utils.set_random_seed(2)
    head = hd.build_head(N_FEATURES, 0.2)
    feats = calibrated(images, training=False).numpy()
    mean, std = feats.mean(0), feats.std(0) + 1e-3
    model = hd.assemble(calibrated, head, mean, std)
    got = model(images, training=False).numpy().reshape(-1)
    ref = head(hd.standardize(feats, mean, std), training=False).numpy().reshape(-1)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert ref.std() > 1e-3  # non-trivial outputs
    # the wrong normalisation would not match
    wrong = head(feats, training=False).numpy().reshape(-1)
    assert np.abs(wrong - got).max() > 1e-3


def separable_features(seed: int, n: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.float32)
    x = rng.normal(0, 1, (n, N_FEATURES)).astype(np.float32)
    x[:, :20] += 1.5 * (2 * y[:, None] - 1)
    return x, y


@pytest.mark.slow
def test_fit_head_learns_separable_features():
    keras.utils.set_random_seed(3)
    x, y = separable_features(0, 300)
    head = hd.build_head(N_FEATURES, 0.2)
    hist = hd.fit_head(head, x[:200], y[:200], x[200:], y[200:], epochs=30, lr=0.003, batch_size=32, patience=5)
    assert "val_accuracy" in hist.history and len(hist.history["loss"]) >= 2
    prob = head(x[200:], training=False).numpy().reshape(-1)
    assert ((prob >= 0.5) == (y[200:] == 1)).mean() > 0.9


def test_unfreeze_top_blocks(images):
    backbone = m.build_backbone(S, "none")
    names = m.unfreeze_top_blocks(backbone, 2)
    blocks = sorted({int(n.split("_")[2]) for n in (layer.name for layer in backbone.layers)
                     if n.startswith("expanded_conv_") and n.split("_")[2].isdigit()})
    top = blocks[-2:]
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(bn.trainable for bn in bns)
    convs = [layer for layer in backbone.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    trainable_convs = [layer.name for layer in convs if layer.trainable]
    assert trainable_convs and len(trainable_convs) < len(convs)
    assert all(any(n.startswith(f"expanded_conv_{b}_") for b in top) or n == "conv_1" for n in trainable_convs)
    assert "conv_1" in trainable_convs and any(n.startswith(f"expanded_conv_{top[0]}_") for n in trainable_convs)
    assert not backbone.get_layer("conv").trainable  # the stem stays frozen
    assert set(names) >= set(trainable_convs)
    assert backbone.trainable_weights and not any("moving" in w.path or "gamma" in w.path or "beta" in w.path
                                                  for w in backbone.trainable_weights)
    assert m.unfreeze_top_blocks(backbone, 0) == []
    assert backbone.trainable_weights == []


def test_missing_local_weights_file(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(RsdetectError, match="features.weights") as err:
        m.build_backbone(S, str(missing))
    assert str(missing) in str(err.value)


def test_mismatched_weights_file_gives_one_line_error(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    path = tmp_path / "x.weights.h5"
    other.save_weights(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RsdetectError, match="features.weights") as err:
            m.build_backbone(S, str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "MobileNetV3Large" in msg


@pytest.mark.slow
def test_matching_local_weights_file_loads(tmp_path, images, jpegs):
    keras.utils.set_random_seed(5)
    source = keras.applications.MobileNetV3Large(input_shape=(S, S, 3), include_top=False, pooling="avg",
                                                 include_preprocessing=True, weights=None)
    m.recalibrate_batchnorm(source, images)  # saved moving statistics make the features non-constant
    path = tmp_path / "mnv3.weights.h5"
    source.save_weights(path)
    loaded = m.build_backbone(S, str(path))
    a = m.extract_features(source, jpegs, S, 5)
    b = m.extract_features(loaded, jpegs, S, 5)
    np.testing.assert_array_equal(a, b)
    assert a.std(axis=0).max() > 0
    fresh = m.extract_features(m.build_backbone(S, "none"), jpegs, S, 5)
    assert np.abs(fresh - b).max() > 1e-3  # loading really changed the weights


def _network_reachable() -> bool:
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=2).close()
        return True
    except OSError:
        return False


def test_imagenet_offline_gives_an_actionable_error():
    cached = Path.home() / ".keras" / "models" / "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"
    if cached.is_file() or _network_reachable():
        pytest.skip("ImageNet weights are reachable here; the offline error cannot be provoked")
    t0 = time.monotonic()
    try:
        with pytest.raises(RsdetectError) as err:
            m.build_backbone(S, "imagenet")
    finally:
        assert time.monotonic() - t0 < 20
    msg = str(err.value)
    assert "features.weights" in msg and ".weights.h5" in msg and "\n" not in msg


def test_imagenet_download_oserror_becomes_actionable_error(monkeypatch):
    """The branch that is caught: an OSError from the download becomes one line naming the setting."""
    def refuse(*args, **kwargs):
        assert kwargs.get("weights") == "imagenet"
        raise OSError("simulated: no route to host")

    monkeypatch.setattr(keras.applications, "MobileNetV3Large", refuse)
    with pytest.raises(RsdetectError) as err:
        m.build_backbone(S, "imagenet")
    msg = str(err.value)
    assert "features.weights" in msg and ".weights.h5" in msg and "\n" not in msg


def _train_head(seed: int) -> list[np.ndarray]:
    m.set_determinism(seed, True)
    x, y = separable_features(9, 160)
    head = hd.build_head(N_FEATURES, 0.3)
    hd.fit_head(head, x[:120], y[:120], x[120:], y[120:], epochs=4, lr=0.003, batch_size=16, patience=10)
    return head.get_weights()


@pytest.mark.slow
def test_set_determinism_repeats_head_training():
    a, b, c = _train_head(11), _train_head(11), _train_head(12)
    for wa, wb in zip(a, b, strict=False):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a, c, strict=False))


def test_largest_batch_doubles_until_memory_runs_out():
    tried = []

    def step(batch):
        tried.append(batch)
        if batch > 100:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    assert m.largest_batch(step, 8, 1024) == 64 and tried == [8, 16, 32, 64, 128]
    tried.clear()
    assert m.largest_batch(step, 8, 40) == 32 and tried == [8, 16, 32]  # the cap bounds the search
    with pytest.raises(RsdetectError, match="batch of 128 images does not fit"):
        m.largest_batch(step, 128, 1024)


def test_gpu_batch_size_is_the_param_on_cpu(calibrated):
    if tf.config.get_visible_devices("GPU"):
        pytest.skip("this machine has a GPU")
    assert m.gpu_batch_size(calibrated, S, 32, 512) == 32


def test_gpu_batch_probe_runs_forward_without_changing_weights(calibrated, monkeypatch):
    monkeypatch.setattr(tf.config, "get_visible_devices", lambda kind=None: ["a GPU"])
    before = [w.numpy().copy() for w in calibrated.weights]
    assert m.gpu_batch_size(calibrated, S, 2, 8) == 8  # this machine's memory holds all of them
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, calibrated.weights, strict=False))


def test_whole_backbone_from_scratch_trains_batchnorm_too(images):
    backbone = m.build_backbone(S, "none")
    names = m.unfreeze_top_blocks(backbone, 15, train_batchnorm=True)
    assert backbone.get_layer("conv").trainable  # the stem too
    assert all(layer.trainable for layer in backbone.layers if layer.weights)
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(bn.momentum == m.BN_MOMENTUM_SCRATCH for bn in bns)
    assert len(names) == sum(1 for layer in backbone.layers if layer.weights)
    # a training-mode call through the assembled model moves the BatchNorm statistics...
    model = hd.assemble(backbone, hd.build_head(N_FEATURES, 0.0), np.zeros(N_FEATURES), np.ones(N_FEATURES))
    before = backbone.get_layer("conv_bn").moving_mean.numpy().copy()
    model(images, training=True)
    assert not np.allclose(before, backbone.get_layer("conv_bn").moving_mean.numpy())
    # ...while in ordinary fine-tuning (BatchNorm frozen) it does not
    m.unfreeze_top_blocks(backbone, 15)
    before = backbone.get_layer("conv_bn").moving_mean.numpy().copy()
    model(images, training=True)
    assert np.array_equal(before, backbone.get_layer("conv_bn").moving_mean.numpy())
