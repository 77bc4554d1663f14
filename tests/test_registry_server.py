"""One registry for every runner: a real `mlflow server` on 127.0.0.1 (SQLite backend, artifacts served by the
server from a tmp folder), the register stage against it through MLFLOW_TRACKING_URI, the champion loaded and
scored by another process, and two registrations racing from two processes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import ROOT, colour_model, params_raw
from mlflow_server import mlflow_server

pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow

S = 64
GAIN = 0.08
PROCESS_S = 240       # one client process (imports TensorFlow and MLflow, registers or scores): 10-30 s here


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(tracking URI, the server's folder): `mlflow server` with a SQLite backend store and --artifacts-destination
    in tmp, so clients reach the artifacts only through the server, as runners on other machines would."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as (uri, root):
        yield uri, root


def client_env(uri: str) -> dict:
    """A client process's environment: this checkout's package, the server's URI and nothing else of MLflow's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(ROOT / "src"), TF_CPP_MIN_LOG_LEVEL="3")
    return env


def run(args: list[str], uri: str, cwd: Path) -> str:
    """Run a client process to completion; its stdout, or a one-line failure with its last stderr line."""
    try:
        res = subprocess.run(args, cwd=cwd, env=client_env(uri), capture_output=True, text=True, timeout=PROCESS_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[1]} did not finish within {PROCESS_S} s", pytrace=False)
    assert res.returncode == 0, f"{args[1:3]} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def write_test_set(folder: Path) -> tuple[list[str], list[int]]:
    """Six flat-colour JPEGs: red ones are 'RS' (label 1), blue ones are not; a colour model's scores are known."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i in range(6):
        label = i % 2
        rgb = (200, 40 + 5 * i, 30) if label else (30, 40 + 5 * i, 200)
        img = np.zeros((72, 96, 3), np.uint8) + np.array(rgb[::-1], np.uint8)  # BGR for OpenCV
        path = folder / f"test_{i}.png"
        assert cv2.imwrite(str(path), img)
        paths.append(str(path))
        labels.append(label)
    return paths, labels


def expected_probability(rgb: tuple[int, int, int], gain: float) -> float:
    """colour_model's output on a flat frame: sigmoid(gain * (R - B))."""
    return 1.0 / (1.0 + math.exp(-gain * (rgb[0] - rgb[2])))


SCORE = """
import json, sys, cv2, mlflow
model = mlflow.pyfunc.load_model("models:/rs-detector@champion")
frames = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in sys.argv[1:]]
out = model.predict(frames)
print(json.dumps({"probability": out["probability"].tolist(), "flag": out["flag"].tolist()}))
"""


def test_register_stage_on_a_server_and_the_champion_scores_in_another_process(server, tmp_path):
    """The register stage script (as `dvc repro` runs it) registers through the server; a second process that
    knows only MLFLOW_TRACKING_URI loads models:/rs-detector@champion and scores images with it."""
    uri, server_root = server
    params = params_raw({"features": {"image_size": S}, "synthesize": {"size": S}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models").mkdir()
    colour_model(S, GAIN).save(tmp_path / "models" / "model.keras")
    paths, labels = write_test_set(tmp_path / "data" / "synth" / "images")
    rows = ["path,label,split,image_id,max_disp_px"] + [
        f"{Path(p).relative_to(tmp_path / 'data' / 'synth')},{lab},test,{i},0"
        for i, (p, lab) in enumerate(zip(paths, labels, strict=False))]
    (tmp_path / "data" / "synth" / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(
        {"models": {"cnn": {"threshold": 0.5, "test": {"roc_auc": 1.0, "precision": 1.0, "recall": 1.0}}}}))

    out = run([sys.executable, str(ROOT / "src" / "register.py"), "models/model.keras", "metrics/evaluate.json",
               "data/synth/manifest.csv", "metrics/register.json"], uri, tmp_path)
    assert "rs-detector version 1 registered and now champion" in out and f"from {uri}" in out
    result = json.loads((tmp_path / "metrics" / "register.json").read_text())
    assert (result["version"], result["champion_version"], result["promoted"]) == ("1", "1", True)
    # the model's files went to the server's artifact folder, not next to the client
    assert list((server_root / "artifacts").rglob("model.keras")) and not (tmp_path / "mlruns").exists()

    red, blue = (200, 40, 30), (30, 45, 200)
    images = []
    for name, rgb in (("red", red), ("blue", blue)):
        path = tmp_path / f"{name}.png"
        assert cv2.imwrite(str(path), np.zeros((120, 160, 3), np.uint8) + np.array(rgb[::-1], np.uint8))
        images.append(str(path))
    other = tmp_path / "elsewhere"  # a second runner: no files of the first one, only the URI
    other.mkdir()
    scored = json.loads(run([sys.executable, "-c", SCORE, *images], uri, other).strip().splitlines()[-1])
    assert scored["flag"] == [True, False]
    np.testing.assert_allclose(scored["probability"],
                               [expected_probability(red, GAIN), expected_probability(blue, GAIN)],
                               atol=1e-4)


RACER = """
import json, sys, time
from pathlib import Path
import numpy as np
import mlflow, keras  # the slow imports, before the start line
from rsdetect.registry.gate import register_candidate
a = json.loads(sys.argv[1])


def wait_for(path, limit):
    end = time.monotonic() + limit
    while not Path(path).exists() and time.monotonic() < end:
        time.sleep(0.02)


# Instrumentation, not a stand-in: the real calls run, with a mark after each champion read and a bounded wait
# before each alias write, to force the interleaving that breaks an unserialised gate (see the test).
Client = mlflow.MlflowClient
read, write = Client.get_model_version_by_alias, Client.set_registered_model_alias


def marked_read(self, *args, **kwargs):
    try:
        return read(self, *args, **kwargs)
    finally:
        Path(a["read_mark"]).touch()


def held_write(self, *args, **kwargs):
    wait_for(a["write_after"], a["hold_s"])
    return write(self, *args, **kwargs)


Client.get_model_version_by_alias, Client.set_registered_model_alias = marked_read, held_write
Path(a["ready"]).touch()
wait_for(a["go"], 600)
time.sleep(a["delay"])
r = register_candidate(a["model"], a["size"], 0.5, {"roc_auc": a["auc"]}, a["paths"], np.array(a["labels"]),
                       a["name"], "champion", "roc_auc", {"git_commit": a["who"]}, tolerance=1e-6)
Path(a["done_mark"]).touch()
print(json.dumps(r))
"""
HOLD_S = 8  # longest an alias write waits for the other racer's mark (with the lock it never comes: +8 s)


def test_two_registrations_racing_leave_the_better_one_champion_and_both_versions(server, tmp_path):
    """Two runners register at once; the gate's read-compare-set is serialised by the registry lock, so the better
    model is champion whichever order they meet in, and both versions are kept.

    The racers force the worst interleaving for an unserialised gate: the better one writes the alias only after
    the worse one has read the champion, and the worse one writes only after the better one is done. Without
    the lock both read "no champion" and the worse one's write lands last (it failed so, every run); with it
    the second racer reads the first one's result, and the waits time out instead (HOLD_S)."""
    import mlflow

    uri, _ = server
    name = "rs-race"
    paths, labels = write_test_set(tmp_path / "test")
    mark = {f"{what}-{who}": str(tmp_path / f"{what}-{who}")
            for what in ("ready", "read", "done") for who in ("better", "worse")}
    # gain 0: p = 0.5 everywhere, ROC AUC 0.5; the worse one starts 1 s later, so it usually meets the lock second
    racers = {"better": (GAIN, 1.0, 0.0, mark["read-worse"]), "worse": (0.0, 0.5, 1.0, mark["done-better"])}
    go = tmp_path / "go"
    procs = {}
    for who, (gain, auc, delay, write_after) in racers.items():
        colour_model(S, gain).save(tmp_path / f"{who}.keras")
        arg = {"model": str(tmp_path / f"{who}.keras"), "size": S, "auc": auc, "paths": paths, "labels": labels,
               "name": name, "who": who, "go": str(go), "delay": delay, "ready": mark[f"ready-{who}"],
               "read_mark": mark[f"read-{who}"], "done_mark": mark[f"done-{who}"], "write_after": write_after,
               "hold_s": HOLD_S}
        procs[who] = subprocess.Popen([sys.executable, "-c", RACER, json.dumps(arg)], cwd=tmp_path, env=client_env(uri),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + PROCESS_S
        while not all(Path(mark[f"ready-{who}"]).exists() for who in racers):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                pytest.fail("a racer did not reach the start line: " +
                            " | ".join(p.stderr.read()[-500:] for p in procs.values() if p.poll() is not None),
                            pytrace=False)
            time.sleep(0.1)
        go.touch()
        results = {}
        for who, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=PROCESS_S)
            assert proc.returncode == 0, f"{who} failed:\n{stderr[-3000:]}"
            results[who] = json.loads(stdout.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    client = mlflow.MlflowClient(tracking_uri=uri)
    versions = {v.tags["git_commit"]: v.version for v in client.search_model_versions(f"name='{name}'")}
    assert sorted(versions) == ["better", "worse"]  # no lost version
    assert {r["version"] for r in results.values()} == set(versions.values())
    aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    assert aliases == {"champion": versions["better"]}  # one champion, the better
    assert not client.search_registered_models(f"name='{name}.gate-lock'")  # the lock was released
