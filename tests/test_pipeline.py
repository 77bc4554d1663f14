"""The whole pipeline as a user runs it: a fresh copy, `dvc repro --pull` offline, a no-op rerun, a param
change on a branch that re-runs only train and what follows, `dvc metrics diff`, and the champion."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_tracked_files
from mlflow_server import mlflow_server

TINY = {"synthesize": {"size": 64, "min_person_area": 60, "pairs_per_photo": 1},
        "external": {"pairs_per_photo": 1},
        "pretrain": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "val_pairs": 8},
        # weights none: two pretrain steps cannot set BatchNorm statistics (its outputs then collapse in train);
        # pretrain still runs, and features recalibrates a random backbone, as the mechanics need
        "features": {"image_size": 64, "calibration_images": 32, "weights": "none"},
        "train": {"head_epochs": 20, "finetune_blocks": 1, "finetune_epochs": 1, "steps_per_epoch": 2, "batch_size": 8},
        "baselines": {"rf_trees": 20}}

STAGES = ("fetch", "synthesize", "external", "pretrain", "features", "train", "baselines", "evaluate", "register")


def sh(cmd: str, cwd: Path, env: dict) -> str:
    res = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def merge(base: dict, over: dict) -> dict:
    return {k: merge(base[k], over[k]) if isinstance(over.get(k), dict) and k in base else over.get(k, base.get(k))
            for k in {**base, **over}}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The runners' shared registry: a real `mlflow server` (train and register reach it through
    MLFLOW_TRACKING_URI, as every CI runner does)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as (uri, root):
        yield uri, root


@pytest.fixture(scope="module")
def repo(tmp_path_factory, registry):
    """The project's tracked files copied into a new git repo, with tiny params, as a fresh clone would be."""
    repo = tmp_path_factory.mktemp("clone") / "rsdetect"
    copy_tracked_files(repo)
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": registry[0], "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("PYTHONPATH", None)
    sh("git init -q -b main && git add -A && git commit -qm init", repo, env)
    return repo, env


@pytest.fixture(scope="module")
def reproduced(repo):
    """`dvc repro --pull` run once in the fresh copy: (repo, env, its output)."""
    repo, env = repo
    return repo, env, sh("dvc repro --pull", repo, env)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_whole_pipeline_offline_from_a_fresh_copy(reproduced):
    repo, env, out = reproduced
    # fetch's params are the committed ones: its data/raw comes from the in-repo remote (tests/test_dvc_remote.py);
    # every other stage has tiny params and runs. Either way DVC has nothing to warn about (issue 22).
    assert "Pulling data for stage: 'fetch'" in out
    for stage in STAGES[1:]:
        assert f"Running stage '{stage}'" in out
    assert "WARNING" not in out, out
    assert "models:/rs-detector@champion" in out
    shown = sh("dvc metrics show --json", repo, env)
    for key in ("cnn", "lr_pixels", "rf_features", "roc_auc"):
        assert key in shown
    for f in ("metrics/plots/roc/cnn.json", "metrics/plots/confusion.json", "metrics/figures/evaluate/roc.png",
              "metrics/figures/synth_pairs.png", "metrics/report.md", "metrics/register.json"):
        assert (repo / f).is_file(), f
    # nothing to do the second time
    again = sh("dvc repro", repo, env)
    assert "Running stage" not in again
    # the champion loads and predicts on an image batch
    code = ("import mlflow, numpy as np; m = mlflow.pyfunc.load_model('models:/rs-detector@champion'); "
            "r = m.predict(np.random.default_rng(0).integers(0, 255, (3, 90, 120, 3), dtype=np.uint8)); "
            "print(r.shape, sorted(r.columns), float(r.probability.std()) >= 0)")
    assert "(3, 3) ['flag', 'probability', 'tile'] True" in sh(f'python -c "{code}"', repo, env)


@pytest.mark.slow
def test_train_and_register_went_through_the_tracking_server(reproduced, registry):
    """Train's run (params, metrics, model) and the registered champion live on the server, not in the clone."""
    repo, env, _ = reproduced
    code = ("import mlflow; r = mlflow.search_runs(search_all_experiments=True); "
            "print(sorted(n.split('-')[0] for n in r['tags.mlflow.runName']))")
    assert "train" in sh(f'python -c "{code}"', repo, env)
    assert list((registry[1] / "artifacts").rglob("model.keras"))
    assert not (repo / "mlflow.db").exists() and not (repo / "mlruns").exists()


@pytest.mark.slow
def test_a_second_runner_pulls_every_stage_from_the_shared_remote(reproduced, tmp_path):
    """Runner A pushes what it computed to a shared directory remote (`storage`, as README's S3/GCS/SSH one);
    runner B, a clone of the same commit with A's dvc.lock, runs `dvc repro --pull` against it and runs no stage:
    it pulls every output, and `dvc status` is clean. The CI recipe (.github/workflows/dvc-repro.yml,
    `dvc repro --pull --allow-missing`) on a clone that changes an evaluate param runs evaluate alone, after
    pulling only evaluate's inputs: the features and the backbone are never downloaded."""
    import time

    repo, env, _ = reproduced
    sh(f"dvc remote add storage {tmp_path / 'storage'} && dvc push -r storage --run-cache", repo, env)
    sh("git add -A && git commit -qm 'runner A: its dvc.lock, and the shared remote'", repo, env)

    runner_b = tmp_path / "runner-b"
    sh(f"git clone -q {repo} {runner_b}", tmp_path, env)
    sh("dvc remote default --local storage", runner_b, env)
    start = time.monotonic()
    out = sh("dvc repro --pull", runner_b, env)
    took = time.monotonic() - start
    assert "Running stage" not in out, out
    for stage in STAGES:
        assert f"Pulling data for stage: '{stage}'" in out or f"Stage '{stage}' didn't change" in out, (stage, out)
    assert "Data and pipelines are up to date." in sh("dvc status", runner_b, env)
    for f in ("models/model.keras", "data/features/features.npz", "data/pretrain/backbone.weights.h5"):
        assert digest(runner_b / f) == digest(repo / f), f
    print(f"runner B: dvc repro --pull from the shared remote, no stage run, in {took:.1f} s")

    runner_c = tmp_path / "runner-c"
    sh(f"git clone -q {repo} {runner_c}", tmp_path, env)
    sh("dvc remote default --local storage", runner_c, env)
    params = yaml.safe_load((runner_c / "params.yaml").read_text())
    params["evaluate"]["target_precision"] = 0.9
    (runner_c / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh("dvc repro --pull --allow-missing evaluate", runner_c, env)
    assert "Running stage 'evaluate'" in out and out.count("Running stage") == 1, out
    assert (runner_c / "models/predictions.csv").is_file() and (runner_c / "data/baselines").is_dir()
    assert not (runner_c / "data/features").exists() and not (runner_c / "data/pretrain").exists()


@pytest.mark.slow
def test_feature_cache_is_reused_when_only_head_params_change(reproduced):
    """A branch that changes head params re-runs train and what follows on the cached features: the backbone
    is not run again (features.npz untouched, same bytes and mtime), nor fetch, synthesize or the baselines."""
    repo, env, _ = reproduced
    cache = repo / "data/features/features.npz"
    before, mtime = digest(cache), cache.stat().st_mtime_ns
    sh("git add -A && git commit -q --allow-empty -m 'run on main'", repo, env)  # empty after the runner test
    sh("git checkout -q -b faster-head", repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["head_lr"] = params["train"]["head_lr"] * 10
    params["train"]["dropout"] = 0.5
    params["train"]["finetune_blocks"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh("dvc repro", repo, env)
    for stage in ("train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    for stage in ("fetch", "synthesize", "external", "pretrain", "features", "baselines"):
        assert f"Running stage '{stage}'" not in out
    assert "Stage 'features' didn't change, skipping" in out
    assert digest(cache) == before and cache.stat().st_mtime_ns == mtime
    assert "train.head_lr" in sh("dvc params diff main", repo, env)
    diff = sh("dvc metrics diff main --all", repo, env)
    assert "metrics/train.json" in diff and "cnn.test.roc_auc" in diff
