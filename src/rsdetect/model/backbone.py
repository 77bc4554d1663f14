"""The backbone: a Keras MobileNetV3 (Small or Large) with its weights, BatchNorm recalibration, which layers
train, and its pooled features of image files (computed once and cached by the features stage). Inputs are raw
RGB 0-255; the network does its own preprocessing. The head lives in rsdetect.model.head.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rsdetect.errors import RsdetectError

# Keras' MobileNetV3 keeps BatchNorm averages at momentum 0.999, which needs thousands of steps to forget its
# initial statistics; a from-scratch run here has hundreds, so its inference-mode outputs would stay constant.
BN_MOMENTUM_SCRATCH = 0.9


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TF from the one seed; op determinism makes CPU runs repeatable."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def use_mixed_precision_if_gpu() -> bool:
    """Mixed precision only where a GPU makes it pay; CPU stays float32 (GPUs hidden by `devices: cpu` count
    as absent: rsdetect.model.distribute)."""
    if tf.config.get_visible_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
        return True
    return False


def largest_batch(step: Callable[[int], object], start: int, cap: int) -> int:
    """The largest of start, 2*start, 4*start, ... <= cap for which `step(batch)` runs without exhausting memory."""
    fits, batch = 0, start
    while batch <= cap:
        try:
            step(batch)
        except tf.errors.ResourceExhaustedError:
            break
        fits, batch = batch, batch * 2
    if not fits:
        raise RsdetectError(f"a batch of {start} images does not fit in GPU memory; lower batch_size in params.yaml")
    return fits


def gpu_batch_size(model: keras.Model, image_size: int, start: int, cap: int) -> int:
    """On a GPU, the largest batch that fits one forward pass; else `start`."""
    if not tf.config.get_visible_devices("GPU"):
        return start

    def forward(batch: int) -> object:
        return model(tf.random.uniform((batch, image_size, image_size, 3), 0, 255), training=False)

    return largest_batch(forward, start, cap)


ARCHITECTURES = {"small": "MobileNetV3Small", "large": "MobileNetV3Large"}


def build_backbone(image_size: int, weights: str, arch: str = "large",
                   weights_file: str | Path | None = None) -> keras.Model:
    """MobileNetV3 (arch small | large) without top, average-pooled.

    weights: 'imagenet' (download), 'none' (random), 'pretrained' (`weights_file`, made by the pretrain stage)
    or a path to a local .weights.h5 file (air-gapped sites).
    """
    make = getattr(keras.applications, ARCHITECTURES[arch])
    kwargs = dict(input_shape=(image_size, image_size, 3), include_top=False, pooling="avg", include_preprocessing=True)
    if weights == "imagenet":
        try:
            return make(weights="imagenet", **kwargs)
        except Exception as exc:  # Keras wraps network failures in a bare Exception("URL fetch failure ...")
            raise RsdetectError(f"features.weights: cannot download the ImageNet weights ({type(exc).__name__}); "
                                "set features.weights to pretrained, a local .weights.h5 file or none") from None
    backbone = make(weights=None, **kwargs)
    if weights != "none":
        path = Path((weights_file or "") if weights == "pretrained" else weights)
        if not path.is_file():
            raise RsdetectError(f"features.weights: weights file {path} not found"
                                + (" (run `dvc repro pretrain` or `dvc pull`)" if weights == "pretrained" else ""))
        try:
            backbone.load_weights(path, skip_mismatch=False)
        except (OSError, ValueError) as exc:
            raise RsdetectError(f"features.weights: {path} does not match {ARCHITECTURES[arch]} at {image_size}px "
                                f"({str(exc).splitlines()[0][:160]})") from None
    return backbone


def load_images(paths: list[str], image_size: int) -> np.ndarray:
    """Decode square images to a float32 (N, S, S, 3) RGB batch in 0-255 (preprocess.load_square: the decoder
    and resize that scan and the registered model use, so every path feeds the model the same pixels)."""
    from rsdetect.preprocess import load_square

    out = np.empty((len(paths), image_size, image_size, 3), np.float32)
    for i, p in enumerate(paths):
        out[i] = load_square(p, image_size)
    return out


def image_dataset(paths: list[str], labels: np.ndarray | None, image_size: int, batch_size: int,
                  shuffle_seed: int | None = None) -> tf.data.Dataset:
    """tf.data over square image files: decoded and resized by preprocess.load_square, batched, prefetched.

    OpenCV, not tf.io.decode_jpeg: decoders differ by a few levels per pixel, enough to move a probability,
    and scan and the registered model decode with OpenCV. deterministic=True keeps the order of `paths`.
    """
    from rsdetect.preprocess import load_square

    paths_t = tf.constant(list(paths), dtype=tf.string)  # an empty list would otherwise become float32
    ds = tf.data.Dataset.from_tensor_slices(paths_t if labels is None else (paths_t, labels.astype(np.float32)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    def decode(path, *label):
        # numpy_function runs on tf.data's threads; cv2.imdecode releases the GIL, so they decode in parallel.
        img = tf.numpy_function(lambda p: load_square(p.decode(), image_size), [path], tf.float32, stateful=False)
        img = tf.ensure_shape(img, (image_size, image_size, 3))
        return (img, *label) if label else img

    decoded = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return decoded.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def recalibrate_batchnorm(backbone: keras.Model, images: np.ndarray) -> None:
    """Set every BatchNorm's moving statistics to those of `images`.

    A randomly initialised MobileNetV3 keeps mean 0 / variance 1 statistics that collapse its
    inference-mode output to a constant; one training-mode pass with momentum 0 fixes that.
    """
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    backbone(tf.convert_to_tensor(images), training=True)
    for bn, m in zip(bns, saved, strict=False):
        bn.momentum = m


def extract_features(backbone: keras.Model, paths: list[str], image_size: int, batch_size: int) -> np.ndarray:
    """Pooled backbone features of every image, in order, computed once (batched, inference mode)."""
    feats = [backbone(batch, training=False).numpy() for batch in image_dataset(paths, None, image_size, batch_size)]
    return np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, backbone.output_shape[-1]), np.float32)


def unfreeze_top_blocks(backbone: keras.Model, n_blocks: int, train_batchnorm: bool = False) -> list[str]:
    """Make the top `n_blocks` inverted-residual blocks (and the last conv) trainable; BatchNorm stays frozen.

    `n_blocks` >= the number of blocks (15) makes the whole backbone trainable, stem included. With
    `train_batchnorm` (from scratch) BatchNorm trains too, its moving averages at momentum BN_MOMENTUM_SCRATCH.
    """
    backbone.trainable = True
    block_of = {}
    for layer in backbone.layers:
        m = re.match(r"expanded_conv_(\d+)_", layer.name)
        block_of[layer.name] = int(m.group(1)) if m else None
    blocks = sorted({b for b in block_of.values() if b is not None})
    whole = n_blocks >= len(blocks)
    top = set(blocks[-n_blocks:]) if n_blocks > 0 else set()
    last_block_layer = max((i for i, layer in enumerate(backbone.layers) if block_of[layer.name] is not None),
                           default=-1)
    unfrozen = []
    for i, layer in enumerate(backbone.layers):
        train_it = whole or (n_blocks > 0 and (block_of[layer.name] in top or i > last_block_layer))
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train_it and (train_batchnorm or not is_bn)
        if is_bn and layer.trainable:
            layer.momentum = BN_MOMENTUM_SCRATCH
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


