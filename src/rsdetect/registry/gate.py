"""The champion gate: register a candidate as `rs-detector` and move the `champion` alias only when it beats the
champion, both re-scored on the same test set by the same code; one registration at a time per registry."""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.io import file_md5
from rsdetect.registry.pyfunc import RsDetector
from rsdetect.registry.tracking import (
    git_commit,
    local_process_alive,
    project_root,
    run_tags,
    setup_mlflow,
    tracking_server,
    tracking_uri,
)
from rsdetect.threshold import resolve_threshold

SCORE_TIE = 1e-9  # scores closer than this are a tie: the champion stays


def test_set_score(predict: Any, threshold: float, metric: str, test_paths: list[str],
                   test_labels: np.ndarray) -> float:
    """`metric` of a pyfunc's predict (champion from the registry, or candidate via RsDetector.from_keras) on the
    test images: the one scoring both sides of the gate go through, so neither side's figure is taken on trust."""
    import pandas as pd

    from rsdetect.evaluation.metrics import binary_metrics

    frames = pd.DataFrame({"image": [Path(p).read_bytes() for p in test_paths]})
    prob = predict(frames)["probability"].to_numpy()
    return float(binary_metrics(test_labels, prob, threshold)[metric])


def champion_score(name: str, alias: str, metric: str, test_paths: list[str],
                   test_labels: np.ndarray) -> tuple[str | None, float | None]:
    """The current champion's version and its `metric` on *this* test set (re-scored, so the comparison is fair)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    champion = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    tag = current.tags.get("threshold")
    threshold = resolve_threshold(None if tag is None else float(tag))
    return current.version, test_set_score(champion.predict, threshold, metric, test_paths, test_labels)


def candidate_score(model_path: str | Path, image_size: int, threshold: float, metric: str, claimed: float,
                    tolerance: float, test_paths: list[str], test_labels: np.ndarray) -> float:
    """The candidate's `metric`, re-scored exactly as the champion is; its evaluation's `claimed` figure must agree
    within `tolerance` (register.claim_tolerance), or the registration is refused in one line: an evaluation file
    that does not belong to the model (or was edited) would otherwise decide who serves every camera."""
    detector = RsDetector.from_keras(str(model_path), threshold, image_size)
    score = test_set_score(lambda frames: detector.predict(None, frames), threshold, metric, test_paths, test_labels)
    if not abs(score - float(claimed)) <= tolerance:
        raise RsdetectError(f"{model_path}: its evaluation claims test {metric} {float(claimed):.4f}, but it scores "
                            f"{score:.4f} on the same {len(test_paths)} test images; refusing to register it "
                            f"(rerun `dvc repro evaluate` for this model)")
    return score


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
        if _take_over_dead_lock(client, lock):
            continue
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


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Logger `name` says only errors inside the block."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


HOLDER = re.compile(r"^(\S+) pid (\d+) since ")  # gate_lock's description of its holder


def _take_over_dead_lock(client: Any, lock: str) -> bool:
    """Delete `lock` if its holder is a dead process on this host (a SIGKILLed register), saying so; else False."""
    import sys

    from mlflow.exceptions import MlflowException

    try:
        description = client.get_registered_model(lock).description or ""
    except MlflowException:
        return True  # released just now: try again
    m = HOLDER.match(description)
    if not m or local_process_alive(m.group(1), int(m.group(2))) is not False:
        return False
    print(f"register: taking over {lock}, left by {description}: that process is gone", file=sys.stderr)
    try:
        client.delete_registered_model(lock)
    except MlflowException:
        pass  # another runner took it over first
    return True


def register_candidate(model_path: str | Path, image_size: int, threshold: float, metrics: dict[str, float],
                       test_paths: list[str], test_labels: np.ndarray, name: str, alias: str, metric: str,
                       tags: dict[str, str], force: bool = False, *, tolerance: float,
                       serving: dict[str, Any] | None = None) -> dict:
    """Register the checkpoint as a version of `name` (once per checkpoint, threshold and serving params) and move
    `alias` to it only if it beats the current champion on `metric` over the same test set (or `force`), or is the
    champion's own checkpoint and threshold with other serving params (`same_model`). Both are re-scored here;
    `metrics[metric]` (the evaluation's figure) must agree with the candidate's within `tolerance`.

    `serving` (config.serving_params: the shear and video.analysis params the pipeline measured video with) goes
    into the version's model config, so `scan` and `watch` of `models:/...` on a host without params.yaml measure
    video as the pipeline did (serve.loaders.registered_serving), as an exported model's sidecar does."""
    with tracking_server(tracking_uri()):
        setup_mlflow()  # the first request: a server that is down is one line, before the scoring
        score = candidate_score(model_path, image_size, threshold, metric, metrics[metric], tolerance, test_paths,
                                test_labels)  # before anything is registered: a refusal changes nothing
        return _register(model_path, image_size, threshold, metrics, score, test_paths, test_labels, name, alias,
                         metric, tags, force, serving)


def _register(model_path: str | Path, image_size: int, threshold: float, metrics: dict[str, float], score: float,
              test_paths: list[str], test_labels: np.ndarray, name: str, alias: str, metric: str,
              tags: dict[str, str], force: bool, serving: dict[str, Any] | None) -> dict:
    """register_candidate's body, inside tracking_server."""
    import mlflow

    client = mlflow.MlflowClient()
    with gate_lock(client, name):  # the read-compare-set below is one step for every runner sharing the server
        return _gate(client, model_path, image_size, threshold, metrics, score, test_paths, test_labels, name, alias,
                     metric, tags, force, serving)


def identity_of(model_path: str | Path, threshold: float, serving: dict[str, Any] | None) -> str:
    """A registration's identity: the checkpoint's md5 and the threshold (the model), then a digest of the serving
    params where there are any (what it measures video with)."""
    model = f"{file_md5(model_path)}-{threshold:.6f}"
    if serving is None:
        return model
    return f"{model}-{hashlib.md5(json.dumps(serving, sort_keys=True).encode()).hexdigest()[:12]}"


def same_model(identity: str, other: str | None) -> bool:
    """Whether two identities name the same checkpoint and threshold (their serving params may differ)."""
    return other is not None and identity.split("-")[:2] == other.split("-")[:2]


def _gate(client, model_path: str | Path, image_size: int, threshold: float, metrics: dict[str, float], score: float,
          test_paths: list[str], test_labels: np.ndarray, name: str, alias: str, metric: str, tags: dict[str, str],
          force: bool, serving: dict[str, Any] | None) -> dict:
    """Register the checkpoint once (per serving params) and move the alias if it wins (under gate_lock)."""
    import mlflow

    identity = identity_of(model_path, threshold, serving)
    existing = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("identity") == identity] \
        if client.search_registered_models(f"name='{name}'") else []
    champ_version, champ_score = champion_score(name, alias, metric, test_paths, test_labels)
    champ_identity = None if champ_version is None else client.get_model_version(name, champ_version).tags.get(
        "identity")
    if existing:
        version = existing[0].version
    else:
        with mlflow.start_run(run_name=f"register-{tags.get('git_commit', 'nogit')[:8]}", tags=run_tags()):
            mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()
                                if isinstance(v, (int, float)) and np.isfinite(v)})
            mlflow.log_params({"threshold": threshold, "image_size": image_size})
            # MLflow warns on every registration that a pickled pyfunc runs code when loaded: true, documented for
            # users in docs/security.md (trusted registries only), and nothing a user of `register` can act on.
            with quiet_logger("mlflow.pyfunc"):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=RsDetector(), artifacts={"keras_model": str(model_path)},
                    model_config={"threshold": threshold, "image_size": image_size,
                                  **({} if serving is None else {"serving": serving})},
                    registered_model_name=name,
                    pip_requirements=["rsdetect", "tensorflow-cpu==2.21.0", "keras==3.15.1",
                                      "opencv-python-headless==5.0.0.93"])
        version = str(info.registered_model_version)
        all_tags = {**tags, "identity": identity, "threshold": f"{threshold:.6f}",
                    **{f"test_{k}": f"{v:.6f}" for k, v in metrics.items() if isinstance(v, (int, float))}}
        for k, v in all_tags.items():
            client.set_model_version_tag(name, version, k, str(v))
    # Both scores come from test_set_score; better by more than rounding noise, or the champion stays. The champion's
    # own checkpoint and threshold registered with other serving params (the pipeline's video.analysis changed) is
    # the same model measuring video as the pipeline now does: it takes the alias, or a camera host reading the
    # champion's params (no params.yaml there) would measure video with the old ones.
    other = str(champ_version) != str(version)  # the candidate is not the champion already
    renewed = other and same_model(identity, champ_identity)
    promote = force or champ_score is None or renewed or (other and score > champ_score + SCORE_TIE)
    if promote:
        client.set_registered_model_alias(name, alias, version)
    current = client.get_model_version_by_alias(name, alias).version
    return {"model_name": name, "version": str(version), "alias": alias, "champion_version": str(current),
            "promoted": bool(promote), "already_registered": bool(existing), "candidate_score": score,
            "serving_params": serving is not None, "renewed": bool(renewed and not force),
            "previous_champion_version": None if champ_version is None else str(champ_version),
            "previous_champion_score": champ_score, "metric": metric, "uri": f"models:/{name}@{alias}",
            "tracking_uri": tracking_uri()}


def register_summary(result: dict) -> str:
    """What a registration did, in words: a rerun of the same checkpoint says so instead of "not champion"."""
    name, version, alias = result["model_name"], result["version"], result["alias"]
    champion = str(result["champion_version"])
    if result.get("already_registered"):
        head = f"{name} version {version} is already registered"
        if champion == str(version):
            now = result["promoted"] and result["previous_champion_version"] != champion
            return f"{head} and {'now' if now else 'already'} {alias}"
        return f"{head}; {'now' if result['promoted'] else 'not'} {alias} ({alias} is version {champion})"
    if result.get("renewed"):
        return (f"{name} version {version} registered and now {alias}: {alias}'s own checkpoint with this pipeline's "
                f"serving params (shear, video.analysis)")
    if result["promoted"]:
        return f"{name} version {version} registered and now {alias}"
    return (f"{name} version {version} registered; not {alias} ({alias} is version {champion}; "
            f"this one does not beat it on {result['metric']})")


def register_from_outputs(params_path: str, model_path: str, evaluation_path: str, manifest_path: str,
                          out_path: str, force: bool = False) -> dict:
    """Register the pipeline's checkpoint with its operating threshold and test metrics; write the result JSON."""
    from rsdetect.config import load_params, serving_params
    from rsdetect.io import write_json
    from rsdetect.synth.manifest import read_manifest

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
                                r.model_name, r.alias, r.metric, tags, force=force, tolerance=r.claim_tolerance,
                                serving=serving_params(params))
    write_json(out_path, {k: v for k, v in result.items() if k != "tracking_uri"})
    print(f"register: {register_summary(result)}; "
          f"load it with mlflow.pyfunc.load_model('{result['uri']}') from {result['tracking_uri']}")
    print("register: metrics in metrics/*.json (dvc metrics show), report in metrics/report.md, "
          "plots in metrics/plots (dvc plots show) and metrics/figures/*.png")
    return result
