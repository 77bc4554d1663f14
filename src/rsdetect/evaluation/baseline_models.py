"""Baselines beside the CNN: logistic regression and random forest on downsampled pixels (as the prior
attempt did) and on the CNN's cached backbone features.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from rsdetect.errors import RsdetectError


def pixel_features(paths: list[str | Path], side: int) -> np.ndarray:
    """Each image as its grayscale, downsampled to side x side, flattened to [0, 1]."""
    out = np.empty((len(paths), side * side), np.float32)
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise RsdetectError(f"{p}: cannot read as an image")
        out[i] = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA).reshape(-1) / 255.0
    return out


def logistic_regression(C: float, seed: int):
    """Standardised logistic regression (lbfgs)."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))


def random_forest(n_trees: int, max_depth: int, seed: int) -> RandomForestClassifier:
    """A random forest; n_jobs=1 keeps its output identical whatever the core count."""
    return RandomForestClassifier(n_estimators=n_trees, max_depth=max_depth, random_state=seed, n_jobs=1)


def fit_predict(model, x_train: np.ndarray, y_train: np.ndarray, x_all: np.ndarray) -> np.ndarray:
    """Fit on train, return P(rolling shutter) for every row of x_all."""
    model.fit(x_train, y_train)
    return model.predict_proba(x_all)[:, 1]
