"""Which devices train: the tf.distribute strategy of a `devices` param (train.devices, pretrain.devices), the
learning rate of its global batch, each step's batch split across replicas, and BatchNorm over the global batch.

One device is TF's default strategy: the single-device code path, unchanged (byte-identical results). Several are
a MirroredStrategy: each replica holds a copy of the variables and takes its slice of the global batch
(`batch_size` per replica x replicas); the gradients are all-reduced before one update, so N replicas take the
step one device would take on the whole global batch. With TF_CONFIG set (or `multiworker`), the same code runs
under MultiWorkerMirroredStrategy on every machine of the cluster (README: untested here).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import keras
import numpy as np
import tensorflow as tf

from rsdetect.errors import RsdetectError


def strategy_for(devices: str | int, param: str) -> tf.distribute.Strategy:
    """The strategy for a `devices` value: `auto` (every visible GPU, the CPU when none; several machines when
    TF_CONFIG is set), a device count (the first N GPUs, or logical CPUs where there is no GPU), `cpu` (GPUs
    hidden) or `multiworker`. One device gives the default strategy. Call it before TF touches a device."""
    if devices == "multiworker" or (devices == "auto" and os.environ.get("TF_CONFIG")):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices == "cpu":
        try:
            tf.config.set_visible_devices([], "GPU")  # mixed precision stays off too (backbone checks visible GPUs)
        except RuntimeError:
            raise RsdetectError(f"{param}: cpu must be chosen before TensorFlow initialises its devices") from None
        return tf.distribute.get_strategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if devices == "auto":
        names = gpus
    else:
        count = int(devices)  # the schema's other choices (auto, cpu, multiworker) are handled above
        pool = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        if count > len(pool):
            raise RsdetectError(f"{param}: {count} devices asked, {len(pool)} {'GPU' if gpus else 'CPU'} "
                                "device(s) visible")
        names = pool[:count]
    return tf.distribute.MirroredStrategy(names) if len(names) > 1 else tf.distribute.get_strategy()


def scaled_lr(lr: float, replicas: int) -> float:
    """The learning rate for `replicas` x the per-replica batch: lr x sqrt(replicas) (one replica: lr exactly).

    Why the square root, not the linear rule (Goyal et al. 2017, for SGD): Adam divides each step by the
    gradient's running RMS, so a larger batch does not make its steps larger; it only lowers their noise, whose
    variance falls as 1 / batch. Keeping the noise of an Adam step the same as with the per-replica batch needs
    lr x sqrt(N) (Malladi et al., NeurIPS 2022, the SDE scaling rule for adaptive methods). Linear scaling of our
    from-scratch pretrain lr (1e-3) on 8 GPUs would be 8e-3, where Adam on MobileNetV3 is known to diverge.
    Not measured here (2 CPU cores cannot run a multi-device pretrain); tune on a GPU runner.
    """
    return lr * math.sqrt(replicas) if replicas > 1 else lr


def split_batch(strategy: tf.distribute.Strategy, x: np.ndarray, y: np.ndarray) -> tuple:
    """(x, y) as train_on_batch takes it under `strategy`: unchanged on one replica; else each replica gets its
    contiguous slice. Keras' train_on_batch hands a plain array to every replica whole (measured: both replicas
    of a 2-CPU MirroredStrategy saw all 8 rows of an 8-row batch), so N replicas would repeat the same work.
    Slices of an even size keep each rolling-shutter image with its twin (PairStream puts them side by side).
    Under MultiWorkerMirroredStrategy every worker draws the same global batch (a pure function of seed, epoch,
    step) and its replicas take their slices by global replica id."""
    n = strategy.num_replicas_in_sync
    if n == 1:
        return x, y
    per, rest = divmod(len(x), n)
    if rest or per % 2:
        raise RsdetectError(f"a batch of {len(x)} images does not split into {n} even per-replica batches")

    def part(ctx: tf.distribute.experimental.ValueContext) -> tuple[np.ndarray, np.ndarray]:
        i = ctx.replica_id_in_sync_group
        return x[i * per:(i + 1) * per], y[i * per:(i + 1) * per]

    return strategy.experimental_distribute_values_from_function(part)


def _layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """`layer` and every layer nested in it (a backbone inside the classifier)."""
    yield layer
    for inner in getattr(layer, "layers", []):
        yield from _layers(inner)


@contextmanager
def synced_batchnorm(model: keras.Model, replicas: int) -> Iterator[None]:
    """While training on several replicas, every BatchNorm computes its batch statistics over the global batch.

    Why: unsynchronised, each replica would normalise by its own slice, so N replicas x B images would train a
    different network from one device on N x B (our pretrain trains BatchNorm from scratch). The cost is three
    all-reduces of per-channel sums per BatchNorm layer and step. The flag is put back afterwards, so the saved
    model's config is the same whatever trained it.
    """
    bns = ([layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
           if replicas > 1 else [])
    saved = [bn.synchronized for bn in bns]
    for bn in bns:
        bn.synchronized = True
    try:
        yield
    finally:
        for bn, flag in zip(bns, saved, strict=False):
            bn.synchronized = flag
