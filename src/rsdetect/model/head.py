"""The head on the backbone's pooled features, its training on cached features, the assembled image -> probability
model, and scoring image files with it. Apart from rsdetect.model.backbone so that editing the head does not invalidate
the cached features (the features stage runs only the backbone).
"""
from __future__ import annotations

import keras
import numpy as np


def build_head(n_features: int, dropout: float) -> keras.Model:
    """The classifier on pooled features: dropout then one sigmoid unit."""
    inputs = keras.Input((n_features,), name="features")
    x = keras.layers.Dropout(dropout, name="head_dropout")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head_dense")(x)
    return keras.Model(inputs, outputs, name="head")


def fit_head(head: keras.Model, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             epochs: int, lr: float, batch_size: int, patience: int,
             callbacks: list | None = None) -> keras.callbacks.History:
    """Train the head on cached features with early stopping on validation loss (best weights restored)."""
    head.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True)
    return head.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=batch_size,
                    shuffle=True, verbose=0, callbacks=[stop, *(callbacks or [])])


def standardize(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std, the normalisation the head is trained with."""
    return (features - mean) / std


def assemble(backbone: keras.Model, head: keras.Model, mean: np.ndarray, std: np.ndarray) -> keras.Model:
    """Image -> probability: backbone, the feature normalisation learnt on train, then the head.

    Each BatchNorm's `trainable` flag sets its mode when training (Keras 3 runs a frozen BatchNorm in inference
    mode, and a nested `training=False` is not kept by functional models): see unfreeze_top_blocks.
    """
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    norm = keras.layers.Normalization(mean=mean, variance=np.square(std), name="feature_norm")(backbone(inputs))
    return keras.Model(inputs, head(norm), name="rs_detector")


def predict_paths(model: keras.Model, paths: list[str], image_size: int, batch_size: int) -> np.ndarray:
    """Probabilities for image files, in order, exactly as scan and the registered model score them: decoded by
    OpenCV, covered by S x S tiles at the training scale, max over tiles (a square image is its one tile).
    The model is called directly on batches of `batch_size` tiles: no per-call predict overhead."""
    from rsdetect.preprocess import decode_paths, score_frames

    probs, _ = score_frames(lambda x: model(x, training=False), decode_paths(paths), image_size, batch_size)
    return probs
