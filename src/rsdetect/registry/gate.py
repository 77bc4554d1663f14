"""MLflow: where runs go, the pyfunc that production loads (preprocessing and threshold inside), and
registration of a candidate as `rs-detector`, moving the `champion` alias only when it is better.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.io import file_md5  # noqa: F401  (re-exported: train.py and tests import it from here)
from rsdetect.preprocess import TILE_BATCH, box_text, decode, score_frames



def project_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root; inside a `dvc exp run --temp` copy (.dvc/tmp/exps/...), the original one."""
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite file at the repository root (absolute: survives temp copies).
    MLflow's HTTP waits are bounded by the package's environment (rsdetect.ENVIRONMENT)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


@contextmanager
def tracking_server(uri: str) -> Iterator[None]:
    """Turn "the HTTP tracking server cannot be reached" (refused, timed out, unknown host) into one RsdetectError
    line naming the URI; every other MLflow error passes through unchanged (it is not the user's setup)."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.exceptions.RequestException) as exc:
        text = str(exc)
        network = isinstance(exc, requests.exceptions.RequestException) or text.startswith("API request to") \
            or "MLFLOW_HTTP_REQUEST_TIMEOUT" in text
        if not (uri.startswith(("http://", "https://")) and network):
            raise
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
        reason = errno.group(1).strip() if errno else "timed out" if "timeout" in text.lower() else "no answer"
        raise RsdetectError(f"MLflow tracking server {uri} cannot be reached ({reason}); start it or set "
                            f"MLFLOW_TRACKING_URI (waits bounded by MLFLOW_HTTP_REQUEST_TIMEOUT="
                            f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT')} s, MLFLOW_HTTP_REQUEST_MAX_RETRIES="
                            f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES')})") from None


def setup_mlflow(experiment: str = "rsdetect") -> None:
    """Point MLflow at the tracking URI and the experiment (the first request: a server that is down is one line)."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with tracking_server(uri):
        mlflow.set_experiment(experiment)


def decode_frame(item: Any) -> np.ndarray:
    """One input frame as RGB uint8 (H, W, 3): an RGB array, or encoded image bytes (raw or base64 text)
    decoded by preprocess.decode, the decoder every other path uses."""
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim in (2, 3):
        return item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=2)
    if isinstance(item, str):
        try:
            item = base64.b64decode(item, validate=True)
        except binascii.Error:
            raise RsdetectError("input image is not valid base64") from None
    if isinstance(item, (bytes, bytearray)):
        return decode(item, "input image")
    raise RsdetectError(f"unsupported image input of type {type(item).__name__} (give RGB uint8 arrays or encoded bytes)")


def iter_frames(model_input: Any) -> Iterator[np.ndarray]:
    """Frames of a (N, H, W, 3) uint8 array, a list of arrays/bytes, or a DataFrame with an `image` column,
    decoded one at a time (a test set's encoded bytes are small; all of it decoded at once is not)."""
    if hasattr(model_input, "columns"):
        column = "image" if "image" in model_input.columns else model_input.columns[0]
        items = model_input[column].tolist()
    elif isinstance(model_input, np.ndarray) and model_input.ndim == 3 and model_input.dtype == np.uint8:
        items = [model_input]
    else:
        items = model_input if isinstance(model_input, np.ndarray) and model_input.ndim == 4 else list(model_input)
    return (decode_frame(v) for v in items)


def frames_from_input(model_input: Any) -> list[np.ndarray]:
    """Every frame of the input (see iter_frames), decoded."""
    return list(iter_frames(model_input))


try:
    import mlflow.pyfunc as _pyfunc
    _Base = _pyfunc.PythonModel
except ImportError:  # scanning with an exported model needs no MLflow
    _Base = object


PREDICT_BATCH = TILE_BATCH  # tiles per model call in the pyfunc


class RsDetector(_Base):
    """MLflow pyfunc: raw images in; probability, flag (threshold from the model config) and the tile that
    gave the probability out. Frames are scored whole, by tiles, as in preprocess.score_frames."""

    _skip_type_hint_validation = True  # inputs are arrays, bytes or DataFrames: validated in decode_frame

    def load_context(self, context) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        self.threshold = float(context.model_config["threshold"])
        self.image_size = int(context.model_config["image_size"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        # A chunk of tiles at a time: one call on a whole test set holds every frame's activations at once
        # (24 GB for 400 frames at 224 px, killed for memory).
        prob, boxes = score_frames(lambda x: self.model(x, training=False), iter_frames(model_input),
                                   self.image_size, PREDICT_BATCH)
        return pd.DataFrame({"probability": prob, "flag": prob >= self.threshold,
                             "tile": pd.Series([box_text(b) for b in boxes], dtype=object)})


SCORE_TIE = 1e-9  # scores closer than this are a tie: the champion stays


def champion_score(name: str, alias: str, metric: str, test_paths: list[str], test_labels: np.ndarray) -> tuple[str | None, float | None]:
    """The current champion's version and its `metric` on *this* test set (re-scored, so the comparison is fair).

    Scored through the champion's pyfunc, which preprocesses as evaluate's model.predict_paths does
    (rsdetect.preprocess), so a checkpoint re-scored here gets the score evaluate gave it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from rsdetect.evaluation.metrics import binary_metrics

    client = mlflow.MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    champion = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    threshold = float(current.tags.get("threshold", 0.5))
    frames = [Path(p).read_bytes() for p in test_paths]
    prob = champion.predict(_bytes_frame(frames))["probability"].to_numpy()
    return current.version, binary_metrics(test_labels, prob, threshold)[metric]


def _bytes_frame(frames: list[bytes]):
    import pandas as pd

    return pd.DataFrame({"image": frames})


# How long a registration waits for other runners' gates (each re-scores the champion on the whole test set and
# uploads a model) before giving up with the holder's name, and how often it asks; 600 s leaves room for a queue.
GATE_LOCK_WAIT_S = 600
GATE_LOCK_POLL_S = 0.5


@contextmanager
def gate_lock(client, name: str) -> Iterator[None]:
    """Hold the registry-wide lock on `name`'s registration: a registered model `<name>.gate-lock`, made on entry
    and deleted on exit; wait up to GATE_LOCK_WAIT_S while another runner holds it.

    Why: the gate reads the champion, re-scores it and then sets the alias. Two runners registering at once
    against one server both read the same champion, both decide to promote, and the later alias write wins even
    when it is the worse model (tests/test_registry_server.py races two). MLflow has no compare-and-set on
    aliases, but creating a registered model is one: the backend store's unique name lets exactly one of two
    concurrent creates succeed (the other gets RESOURCE_ALREADY_EXISTS) on SQLite and PostgreSQL, through the
    server or not. Converging the alias afterwards to the best recorded score instead would compare scores from
    different test sets and undo `--force`. A lock left by a killed run is named in the error, with its holder.
    """
    import socket
    import time

    from mlflow.exceptions import MlflowException

    lock = f"{name}.gate-lock"
    holder = f"{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %z')}"
    deadline = time.monotonic() + GATE_LOCK_WAIT_S
    while True:
        try:
            client.create_registered_model(lock, description=holder)
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        if time.monotonic() > deadline:
            try:
                other = client.get_registered_model(lock).description
            except MlflowException:
                continue  # released just now: try again
            raise RsdetectError(f"MLflow registered model {lock} (the lock on registering {name}) is still held after "
                                f"{GATE_LOCK_WAIT_S} s by {other}; if that run is dead, delete it: "
                                f"mlflow.MlflowClient().delete_registered_model('{lock}')")
        time.sleep(GATE_LOCK_POLL_S)
    try:
        yield
    finally:
        client.delete_registered_model(lock)


def register_candidate(model_path: str | Path, image_size: int, threshold: float, metrics: dict[str, float],
                       test_paths: list[str], test_labels: np.ndarray, name: str, alias: str, metric: str,
                       tags: dict[str, str], force: bool = False) -> dict:
    """Register the checkpoint as a version of `name` (once per checkpoint and threshold) and move `alias`
    to it only if it beats the current champion on `metric` over the same test set (or `force`)."""
    with tracking_server(tracking_uri()):
        return _register(model_path, image_size, threshold, metrics, test_paths, test_labels, name, alias, metric,
                         tags, force)


def _register(model_path: str | Path, image_size: int, threshold: float, metrics: dict[str, float],
              test_paths: list[str], test_labels: np.ndarray, name: str, alias: str, metric: str,
              tags: dict[str, str], force: bool) -> dict:
    """register_candidate's body, inside tracking_server."""
    import mlflow

    setup_mlflow()
    client = mlflow.MlflowClient()
    with gate_lock(client, name):  # the read-compare-set below is one step for every runner sharing the server
        return _gate(client, model_path, image_size, threshold, metrics, test_paths, test_labels, name, alias, metric,
                     tags, force)


def _gate(client, model_path: str | Path, image_size: int, threshold: float, metrics: dict[str, float],
          test_paths: list[str], test_labels: np.ndarray, name: str, alias: str, metric: str, tags: dict[str, str],
          force: bool) -> dict:
    """Register the checkpoint once and move the alias if it wins (under gate_lock)."""
    import mlflow

    identity = f"{file_md5(model_path)}-{threshold:.6f}"
    existing = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("identity") == identity] \
        if client.search_registered_models(f"name='{name}'") else []
    champ_version, champ_score = champion_score(name, alias, metric, test_paths, test_labels)
    if existing:
        version = existing[0].version
    else:
        with mlflow.start_run(run_name=f"register-{tags.get('git_commit', 'nogit')[:8]}"):
            mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)})
            mlflow.log_params({"threshold": threshold, "image_size": image_size})
            info = mlflow.pyfunc.log_model(
                name="model", python_model=RsDetector(), artifacts={"keras_model": str(model_path)},
                model_config={"threshold": threshold, "image_size": image_size}, registered_model_name=name,
                pip_requirements=["rsdetect", "tensorflow-cpu==2.21.0", "keras==3.15.1", "opencv-python-headless==5.0.0.93"])
        version = str(info.registered_model_version)
        all_tags = {**tags, "identity": identity, "threshold": f"{threshold:.6f}",
                    **{f"test_{k}": f"{v:.6f}" for k, v in metrics.items() if isinstance(v, (int, float))}}
        for k, v in all_tags.items():
            client.set_model_version_tag(name, version, k, str(v))
    score = float(metrics[metric])
    # Better by more than rounding: the candidate's score comes from predictions.csv (6 decimals), the champion's
    # from re-scoring at full precision, so the same model scored 0.8262683256172839 vs ...838 and was "promoted".
    promote = force or champ_version is None or (str(champ_version) != str(version) and score > champ_score + SCORE_TIE)
    if promote:
        client.set_registered_model_alias(name, alias, version)
    current = client.get_model_version_by_alias(name, alias).version
    return {"model_name": name, "version": str(version), "alias": alias, "champion_version": str(current),
            "promoted": bool(promote), "already_registered": bool(existing), "candidate_score": score, "previous_champion_version": None if champ_version is None else str(champ_version),
            "previous_champion_score": champ_score, "metric": metric, "uri": f"models:/{name}@{alias}",
            "tracking_uri": tracking_uri()}


def register_summary(result: dict) -> str:
    """What a registration did, in words: a rerun of the same checkpoint says so instead of "not champion"."""
    name, version, alias = result["model_name"], result["version"], result["alias"]
    champion = str(result["champion_version"])
    if result.get("already_registered"):
        head = f"{name} version {version} is already registered"
        if champion == str(version):
            return f"{head} and {'now' if result['promoted'] and result['previous_champion_version'] != champion else 'already'} {alias}"
        return f"{head}; {'now' if result['promoted'] else 'not'} {alias} ({alias} is version {champion})"
    if result["promoted"]:
        return f"{name} version {version} registered and now {alias}"
    return f"{name} version {version} registered; not {alias} ({alias} is version {champion}; this one does not beat it on {result['metric']})"


def git_commit() -> str:
    """The current git commit, or 'nogit'."""
    import subprocess

    res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root())
    return res.stdout.strip() if res.returncode == 0 else "nogit"


def register_from_outputs(params_path: str, model_path: str, evaluation_path: str, manifest_path: str,
                          out_path: str, force: bool = False) -> dict:
    """Register the pipeline's checkpoint with its operating threshold and test metrics; write the result JSON."""
    import json

    from rsdetect.config import load_params
    from rsdetect.synth.twins import read_manifest
    from rsdetect.io import write_json

    params = load_params(params_path)
    for path in (model_path, evaluation_path, manifest_path):
        if not Path(path).is_file():
            raise RsdetectError(f"{path}: missing; run `dvc repro` first")
    evaluation = json.loads(Path(evaluation_path).read_text())
    cnn = evaluation["models"]["cnn"]
    synth = Path(manifest_path).parent
    test = [r for r in read_manifest(manifest_path) if r["split"] == "test"]
    lock = project_root() / "dvc.lock"
    tags = {"git_commit": git_commit(), "dvc_lock_md5": file_md5(lock) if lock.is_file() else "none",
            "data_md5": file_md5(manifest_path), "image_size": str(params.features.image_size)}
    r = params.register
    result = register_candidate(model_path, params.features.image_size, cnn["threshold"], cnn["test"],
                                [str(synth / t["path"]) for t in test], np.array([t["label"] for t in test]),
                                r.model_name, r.alias, r.metric, tags, force=force)
    write_json(out_path, {k: v for k, v in result.items() if k != "tracking_uri"})
    print(f"register: {register_summary(result)}; "
          f"load it with mlflow.pyfunc.load_model('{result['uri']}') from {result['tracking_uri']}")
    print("register: metrics in metrics/*.json (dvc metrics show), report in metrics/report.md, "
          "plots in metrics/plots (dvc plots show) and metrics/figures/*.png")
    return result
