"""Training the whole network on fresh pairs (pairs.PairStream): used by the pretrain and train stages.

A plain loop of train_on_batch calls, not model.fit: each batch is a pure function of (seed, epoch, step), drawn
on a thread while the previous one trains, and validation runs once an epoch on a fixed set; the weights of the
best validation ROC AUC are kept. Every epoch logs images/s so a run's time can be scaled to another machine.
Under a multi-replica strategy (rsdetect.model.distribute; the model built in its scope) each batch is split across
the replicas and BatchNorm normalises over the whole batch: the same step as one device on that batch.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from sklearn import metrics as skm

from rsdetect.model.distribute import split_batch, synced_batchnorm
from rsdetect.synth.pairs import PairStream

EVAL_BATCH = 64  # images per inference call: large enough to amortise the call, small enough for 2 GB of RAM


def build_classifier(backbone: keras.Model, dropout: float) -> keras.Model:
    """Image -> backbone -> dropout -> one sigmoid unit: the network trained end to end on pairs."""
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    x = keras.layers.Dropout(dropout, name="head_dropout")(backbone(inputs))
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head_dense")(x)
    return keras.Model(inputs, outputs, name="rs_detector")


def predict_arrays(model: keras.Model, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """P(rolling shutter) for an image array, in inference mode (model called directly: no predict overhead)."""
    out = [np.asarray(model(x[i:i + batch], training=False)).reshape(-1) for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def scores(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Log loss, accuracy at 0.5 and ROC AUC over a whole set."""
    return {"loss": float(skm.log_loss(y, np.clip(prob, 1e-7, 1 - 1e-7), labels=[0, 1])),
            "accuracy": float(skm.accuracy_score(y, prob >= 0.5)),
            "roc_auc": float(skm.roc_auc_score(y, prob)) if len(np.unique(y)) == 2 else float("nan")}


def epoch_lr(lr: float, lr_end: float, epoch: int, epochs: int) -> float:
    """The learning rate of `epoch`: cosine from `lr` at the first epoch to `lr * lr_end` at the last
    (lr_end 1.0: constant)."""
    if epochs <= 1 or lr_end == 1.0:
        return lr
    return lr * (lr_end + (1.0 - lr_end) * 0.5 * (1.0 + math.cos(math.pi * epoch / (epochs - 1))))


def fit_pairs(model: keras.Model, stream: PairStream, epochs: int, steps: int, lr: float, patience: int,
              val: tuple[np.ndarray, np.ndarray], log: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None, lr_end: float = 1.0) -> list[dict]:
    """Train on fresh pairs; after each epoch score `val` and keep the best weights by validation ROC AUC.

    The learning rate follows epoch_lr: with lr_end < 1 it decays over the planned `epochs` (a stop for patience
    ends it early, wherever the decay has got to).

    Stops after `patience` epochs without a better AUC, or when `should_stop()` says so. Returns the per-epoch
    history (train loss/accuracy in training mode over the epoch's batches, validation scores, images/s); the
    model ends with the best weights. The stream's batch is the global one and `lr` is already scaled for it
    (rsdetect.model.distribute.scaled_lr); the strategy is the one the model was built under.
    """
    strategy = model.distribute_strategy
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy", metrics=["accuracy"])
        if strategy.num_replicas_in_sync > 1:
            # train_on_batch builds the loss, metric and optimizer state from its batch's shapes, which per-replica
            # values lack (Keras 3.15: "'PerReplica' object has no attribute 'shape'"); testing one validation
            # pair builds them without a training step.
            model.test_on_batch(val[0][:2], val[1][:2])
    history, best, best_weights, waited = [], -np.inf, None, 0
    with synced_batchnorm(model, strategy.num_replicas_in_sync):
        for epoch in range(epochs):
            rate = epoch_lr(lr, lr_end, epoch, epochs)
            if lr_end != 1.0:  # a constant rate is left as compiled: the same bytes as before the schedule existed
                model.optimizer.learning_rate.assign(rate)
            row = {**_epoch(model, strategy, stream, epoch, steps, val), "lr": rate}
            history.append(row)
            if log:
                log(row)
            if row["val_roc_auc"] > best:
                best, best_weights, waited = row["val_roc_auc"], model.get_weights(), 0
            else:
                waited += 1
            if waited >= patience or (should_stop and should_stop()):
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return history


def _epoch(model: keras.Model, strategy: tf.distribute.Strategy, stream: PairStream, epoch: int, steps: int,
           val: tuple[np.ndarray, np.ndarray]) -> dict:
    """One epoch of fresh batches, then validation: the history row."""
    start, losses, accs = time.perf_counter(), [], []
    for x, y in stream.epoch(epoch, steps):
        out = model.train_on_batch(*split_batch(strategy, x, y), return_dict=True)
        losses.append(float(out["loss"]))
        accs.append(float(out["accuracy"]))
    train_s = time.perf_counter() - start
    v = scores(val[1], predict_arrays(model, val[0]))
    return {"epoch": epoch, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
            **{f"val_{k}": x for k, x in v.items()}, "shear_scale": stream.scale(epoch),
            "train_images_per_s": steps * stream.batch_size / train_s, "epoch_s": time.perf_counter() - start}
