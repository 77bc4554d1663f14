"""rsdetect.registry: where MLflow writes, the pyfunc's input handling, and champion-alias registration."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from rsdetect import ENVIRONMENT
from rsdetect.errors import RsdetectError
from rsdetect.io import file_md5
from rsdetect.preprocess import to_tiles
from rsdetect.registry.gate import register_candidate, register_summary
from rsdetect.registry.pyfunc import decode_frame, frames_from_input
from rsdetect.registry.tracking import project_root, tracking_uri

from conftest import colour_model as shared_colour_model

HTTP_DEFAULTS = {k: v for k, v in ENVIRONMENT.items() if k.startswith("MLFLOW_HTTP_")}

S = 64
NAME, ALIAS = "rs-detector", "champion"


# --- where runs go ---------------------------------------------------------------------------------------------

def test_project_root_inside_a_dvc_temp_experiment(tmp_path):
    root = tmp_path / "repo"
    inside = root / ".dvc" / "tmp" / "exps" / "tmpabc" / "src"
    inside.mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / ".dvc" / "tmp" / "exps" / "tmpabc" / "dvc.yaml").write_text("stages: {}\n")  # the temp copy has one too
    assert project_root(inside) == root.resolve()
    assert project_root(inside.parent) == root.resolve()
    assert project_root(root / "src") == root.resolve()  # ordinary: nearest parent with dvc.yaml


def test_tracking_uri_defaults_to_an_absolute_sqlite_file_at_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "repo"
    (root / "src" / "deep").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(root / "src" / "deep")
    uri = tracking_uri()
    assert uri.startswith("sqlite:///")
    db = Path(uri[len("sqlite:///"):])
    assert db.is_absolute() and db == root.resolve() / "mlflow.db"
    # from inside a dvc exp temp copy, the runs still go to the original repository's file
    exp = root / ".dvc" / "tmp" / "exps" / "tmpxyz"
    exp.mkdir(parents=True)
    (exp / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(exp)
    assert tracking_uri() == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking_uri() == "sqlite:////elsewhere/x.db"


# --- a tracking server that is down ----------------------------------------------------------------------------

@pytest.fixture
def down_server(monkeypatch):
    """MLFLOW_TRACKING_URI at 127.0.0.1 on a port nothing listens on; MLflow's globals and the HTTP env restored."""
    import socket

    import mlflow.tracking._tracking_service.utils as tracking_utils

    with socket.socket() as sock:  # a free port: bound, then released, so connecting is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    return uri


def test_register_with_the_server_down_is_one_line_naming_it_within_seconds(tmp_path, down_server):
    import time

    start = time.monotonic()
    with pytest.raises(RsdetectError) as err:
        register_candidate(tmp_path / "m.keras", S, 0.5, {"roc_auc": 1.0}, [], np.array([]), NAME, ALIAS,
                           "roc_auc", {}, tolerance=1e-6)
    took = time.monotonic() - start
    msg = str(err.value)
    assert took < 20, f"took {took:.0f} s"  # MLflow's own defaults: about 250 s
    assert msg.startswith(f"MLflow tracking server {down_server} cannot be reached (") and "\n" not in msg
    assert "Connection refused" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained tracebacks
    assert {k: os.environ[k] for k in HTTP_DEFAULTS} == HTTP_DEFAULTS


def test_scan_of_a_registry_uri_with_the_server_down_is_quick(down_server, monkeypatch):
    """scan resolves models:/ URIs through tracking_uri(), which bounds the waits; a user's own value still wins."""
    import time

    from rsdetect.serve.loaders import load_pyfunc

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    start = time.monotonic()
    with pytest.raises(RsdetectError, match="cannot load model"):
        load_pyfunc(f"models:/{NAME}@{ALIAS}")
    assert time.monotonic() - start < 20
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"  # setdefault: not overridden
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]


def test_setup_mlflow_leaves_other_mlflow_errors_alone(tmp_path, monkeypatch):
    """Only an unreachable HTTP server becomes the one line; a local store's errors are not disguised as one."""
    from mlflow.exceptions import MlflowException

    from rsdetect.registry.tracking import tracking_server

    with pytest.raises(MlflowException):
        with tracking_server(f"sqlite:///{tmp_path}/x.db"):
            raise MlflowException("API request to nowhere failed with exception boom")
    with pytest.raises(RsdetectError, match="https://example.invalid cannot be reached"):
        with tracking_server("https://example.invalid"):
            raise MlflowException("API request to https://example.invalid failed with exception "
                                  "[Errno -2] Name or service not known")


# --- inputs the pyfunc accepts ---------------------------------------------------------------------------------

def rgb_frame(h=40, w=60, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), np.uint8)
    img[:, : w // 3] = (250, 10, 10)  # a red band on the left, to check channel order
    return img


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def test_decode_frame_inputs():
    rgb = rgb_frame()
    assert decode_frame(rgb) is rgb
    gray = rgb[..., 1].copy()
    g3 = decode_frame(gray)
    assert g3.shape == (40, 60, 3) and all(np.array_equal(g3[..., c], gray) for c in range(3))
    data = png_bytes(rgb)
    np.testing.assert_array_equal(decode_frame(data), rgb)  # lossless, RGB order kept
    np.testing.assert_array_equal(decode_frame(bytearray(data)), rgb)
    np.testing.assert_array_equal(decode_frame(base64.b64encode(data).decode()), rgb)
    assert tuple(decode_frame(data)[5, 2]) == (250, 10, 10)
    with pytest.raises(RsdetectError, match="input image: cannot decode"):
        decode_frame(b"this is not an image")
    with pytest.raises(RsdetectError, match="input image: cannot decode"):
        decode_frame(base64.b64encode(b"\x00" * 64).decode())
    with pytest.raises(RsdetectError, match="unsupported"):
        decode_frame(rgb.astype(np.float32))
    with pytest.raises(RsdetectError, match="unsupported"):
        decode_frame(42)


def test_decode_frame_non_base64_text_is_an_rsdetect_error():
    with pytest.raises(RsdetectError):
        decode_frame("hello world!")


def test_frames_from_input_forms():
    a, b = rgb_frame(seed=1), rgb_frame(seed=2)
    batch = np.stack([a, b])
    out = frames_from_input(batch)
    assert len(out) == 2 and np.array_equal(out[0], a) and np.array_equal(out[1], b)
    single = frames_from_input(a)
    assert len(single) == 1 and single[0] is a
    mixed = frames_from_input([a, png_bytes(b), base64.b64encode(png_bytes(a)).decode()])
    assert [f.shape for f in mixed] == [(40, 60, 3)] * 3
    np.testing.assert_array_equal(mixed[1], b)
    np.testing.assert_array_equal(mixed[2], a)
    df = pd.DataFrame({"id": [7, 8], "image": [png_bytes(a), base64.b64encode(png_bytes(b)).decode()]})
    frames = frames_from_input(df)
    np.testing.assert_array_equal(frames[0], a)
    np.testing.assert_array_equal(frames[1], b)
    with pytest.raises(RsdetectError):
        frames_from_input(pd.DataFrame({"image": [b"garbage"]}))


# --- registration ----------------------------------------------------------------------------------------------

keras = pytest.importorskip("keras")


def colour_model(gain: float, bias: float = 0.0) -> keras.Model:
    """p = sigmoid(gain * mean(R - B) + bias) at this module's size: known scores for red vs blue frames."""
    return shared_colour_model(S, gain, bias)


def whole_frame_scores(model, frames: list[np.ndarray]) -> np.ndarray:
    """Each frame's probability as the pyfunc defines it: the max of the model over the frame's tiles."""
    return np.array([model(to_tiles(f, S)[0], training=False).numpy().max() for f in frames])


def make_test_frames(tmp_path: Path) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """Six non-square JPEGs: reddish ones are 'RS' (label 1), bluish ones are not."""
    rng = np.random.default_rng(0)
    paths, frames, labels = [], [], []
    for i in range(6):
        label = i % 2
        base = np.array([170, 90, 60] if label else [60, 90, 170], np.float32) + 15 * i
        img = np.clip(base + rng.normal(0, 25, (72, 96, 3)), 0, 255).astype(np.uint8)
        p = tmp_path / f"test_{i}.jpg"
        assert cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(str(p))
        frames.append(img)
        labels.append(label)
    return paths, np.array(labels), frames


@pytest.fixture
def mlflow_env(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # any relative artifact location lands in tmp
    # register_candidate sets MLflow's process-global URIs; put them back afterwards
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None, raising=False)
    # set_experiment caches the experiment id process-wide; an id from this tmp DB must not leak into later tests
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None, raising=False)
    yield mlflow
    if mlflow.active_run():
        mlflow.end_run()
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # set_experiment exports the tmp DB's id; it must not leak


@pytest.mark.slow
def test_register_candidate_end_to_end(tmp_path, mlflow_env):
    mlflow = mlflow_env
    paths, labels, frames = make_test_frames(tmp_path)
    tags = {"git_commit": "0123456789abcdef", "image_size": str(S)}
    good = tmp_path / "good.keras"
    colour_model(0.08).save(good)
    bad = tmp_path / "bad.keras"
    colour_model(-0.08).save(bad)  # ranks the test set backwards
    better = tmp_path / "better.keras"
    colour_model(0.08, 0.1).save(better)

    def register(path, threshold=0.5, force=False, claim=None):
        auc = true_auc(path, paths, labels) if claim is None else claim
        return register_candidate(path, S, threshold, {"roc_auc": auc, "precision": 1.0, "n": 6}, paths, labels,
                                  NAME, ALIAS, "roc_auc", tags, force=force, tolerance=1e-6)

    assert true_auc(good, paths, labels) == 1.0 and true_auc(bad, paths, labels) == 0.0

    # 1. the first registration creates version 1 and makes it champion
    r1 = register(good)
    assert (r1["version"], r1["champion_version"], r1["promoted"]) == ("1", "1", True)
    assert r1["previous_champion_version"] is None and r1["uri"] == f"models:/{NAME}@{ALIAS}"
    assert r1["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"

    # the served champion: raw uint8 RGB frames in; probability (max over the frame's tiles), flag and tile out
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@{ALIAS}")
    out = served.predict(np.stack(frames))
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["probability", "flag", "tile"] and len(out) == 6
    assert set(out["tile"]) <= {",".join(map(str, b)) for b in to_tiles(frames[0], S)[1]}  # 72x96: 2 tiles
    ref = whole_frame_scores(colour_model(0.08), frames)
    np.testing.assert_allclose(out["probability"].to_numpy(), ref, atol=1e-5)
    np.testing.assert_array_equal(out["flag"].to_numpy(), ref >= 0.5)
    assert out["flag"].tolist() == [bool(v) for v in labels]  # the colour rule separates the set
    assert 0 < out["flag"].sum() < 6

    client = mlflow.MlflowClient()
    v1 = client.get_model_version(NAME, "1")
    assert v1.tags["git_commit"] == "0123456789abcdef"
    assert float(v1.tags["threshold"]) == 0.5 and float(v1.tags["test_roc_auc"]) == 1.0
    assert v1.tags["identity"].startswith(file_md5(good))

    # 2. the same checkpoint again: idempotent, no new version, and said so (not "not champion; champion is 1")
    r2 = register(good)
    assert (r2["version"], r2["champion_version"], r2["promoted"]) == ("1", "1", False)
    assert not r1["already_registered"] and r2["already_registered"]
    assert register_summary(r2) == f"{NAME} version 1 is already registered and already {ALIAS}"
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1

    # 3. a worse candidate (re-scored 0.0; the champion re-scores 1.0 on this test set) does not move the alias
    r3 = register(bad)
    assert r3["version"] == "2" and not r3["promoted"] and r3["champion_version"] == "1"
    assert r3["candidate_score"] == pytest.approx(0.0)
    assert register_summary(r3).startswith(f"{NAME} version 2 registered; not {ALIAS} ({ALIAS} is version 1")
    assert r3["previous_champion_score"] == pytest.approx(1.0)
    assert str(client.get_model_version_by_alias(NAME, ALIAS).version) == "1"

    # 3b. the same worse candidate with an inflated evaluation (claims 0.99): refused in one line, nothing moves
    with pytest.raises(RsdetectError) as err:
        register(bad, claim=0.99)
    assert "\n" not in str(err.value) and "claims test roc_auc 0.9900, but it scores 0.0000" in str(err.value)
    assert str(client.get_model_version_by_alias(NAME, ALIAS).version) == "1"
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2

    # 4. force moves it (and registers nothing new)
    r4 = register(bad, force=True)
    assert r4["version"] == "2" and r4["promoted"]
    assert str(client.get_model_version_by_alias(NAME, ALIAS).version) == "2"
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2
    flipped = mlflow.pyfunc.load_model(f"models:/{NAME}@{ALIAS}").predict(np.stack(frames))
    np.testing.assert_allclose(flipped["probability"].to_numpy(), whole_frame_scores(colour_model(-0.08), frames),
                               atol=1e-5)

    # 5. a better candidate (re-scored above the forced champion's 0.0) moves it
    r5 = register(better, threshold=0.6)
    assert str(r5["previous_champion_version"]) == "2" and r5["previous_champion_score"] == pytest.approx(0.0)
    assert (r5["version"], r5["promoted"], r5["champion_version"]) == ("3", True, "3")
    v3 = client.get_model_version(NAME, "3")
    assert float(v3.tags["threshold"]) == pytest.approx(0.6)
    assert float(v3.tags["test_roc_auc"]) == pytest.approx(true_auc(better, paths, labels))
    champion = mlflow.pyfunc.load_model(f"models:/{NAME}@{ALIAS}")
    probs = champion.predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in paths]}))
    np.testing.assert_array_equal(probs["flag"].to_numpy(), probs["probability"].to_numpy() >= 0.6)

    # 6. the same checkpoint at another threshold is a new identity, hence a new version, and ties the champion
    # (ROC AUC does not depend on the threshold): a tie does not move it
    tie = register(better, threshold=0.8)
    assert tie["version"] == "4" and not tie["promoted"] and tie["champion_version"] == "3"


def true_auc(path, paths, labels) -> float:
    """The checkpoint's ROC AUC on the test frames, from the whole-frame scores the pyfunc's tiles reduce to."""
    import keras
    from sklearn.metrics import roc_auc_score

    from rsdetect.preprocess import decode

    frames = [decode(Path(p).read_bytes(), p) for p in paths]
    return float(roc_auc_score(labels, whole_frame_scores(keras.saving.load_model(path, compile=False), frames)))


@pytest.mark.slow
def test_a_gate_lock_left_behind_is_one_line_naming_its_holder(tmp_path, mlflow_env, monkeypatch):
    """A runner killed mid-gate leaves `<name>.gate-lock`; the next one waits GATE_LOCK_WAIT_S, then says who holds
    it and how to remove it, and registers nothing; once it is gone, registration works and leaves no lock."""
    import rsdetect.registry.gate as registry

    mlflow = mlflow_env
    paths, labels, _ = make_test_frames(tmp_path)
    colour_model(0.08).save(tmp_path / "m.keras")
    client = mlflow.MlflowClient()
    client.create_registered_model(f"{NAME}.gate-lock", description="runner-7 pid 42 since yesterday")
    monkeypatch.setattr(registry, "GATE_LOCK_WAIT_S", 0.3)

    def register():
        return register_candidate(tmp_path / "m.keras", S, 0.5, {"roc_auc": 1.0}, paths, labels, NAME, ALIAS,
                                  "roc_auc", {}, tolerance=1e-6)

    with pytest.raises(RsdetectError) as err:
        register()
    msg = str(err.value)
    assert "\n" not in msg and f"{NAME}.gate-lock" in msg and "runner-7 pid 42 since yesterday" in msg
    assert f"delete_registered_model('{NAME}.gate-lock')" in msg
    assert not client.search_registered_models(f"name='{NAME}'")  # nothing registered while locked out
    client.delete_registered_model(f"{NAME}.gate-lock")
    assert register()["champion_version"] == "1"
    assert not client.search_registered_models(f"name='{NAME}.gate-lock'")


def test_pyfunc_scores_many_frames_a_chunk_at_a_time():
    from rsdetect.registry.pyfunc import PREDICT_BATCH, RsDetector

    model = colour_model(0.08)
    seen = []

    def recording(batch, training=False):
        seen.append(len(batch))
        return model(batch, training=training)

    detector = RsDetector()
    detector.model, detector.threshold, detector.image_size = recording, 0.5, S
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (PREDICT_BATCH + 5, 40, 50, 3), dtype=np.uint8)  # 2 tiles each: 74 tiles
    out = detector.predict(None, frames)
    assert seen == [PREDICT_BATCH, PREDICT_BATCH, 10]  # tiles pooled across frames into full chunks
    whole = whole_frame_scores(model, list(frames))
    assert np.allclose(out["probability"].to_numpy(), whole, atol=1e-6)
    assert (out["flag"] == (out["probability"] >= 0.5)).all()
    assert len(detector.predict(None, [])) == 0


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_gate_lock_of_a_dead_local_process_is_taken_over_with_a_message(tmp_path, mlflow_env, capsys):
    """A SIGKILLed `register` on this host leaves its lock; the next one takes it over at once, saying whose it was,
    instead of waiting GATE_LOCK_WAIT_S (600 s) for a holder that cannot release it."""
    import socket
    import time

    mlflow = mlflow_env
    paths, labels, _ = make_test_frames(tmp_path)
    colour_model(0.08).save(tmp_path / "m.keras")
    client = mlflow.MlflowClient()
    holder = f"{socket.gethostname()} pid {dead_pid()} since yesterday"
    client.create_registered_model(f"{NAME}.gate-lock", description=holder)
    start = time.monotonic()
    r = register_candidate(tmp_path / "m.keras", S, 0.5, {"roc_auc": 1.0}, paths, labels, NAME, ALIAS, "roc_auc", {},
                           tolerance=1e-6)
    assert time.monotonic() - start < 60 and r["promoted"]
    assert f"taking over {NAME}.gate-lock, left by {holder}: that process is gone" in capsys.readouterr().err
    assert not client.search_registered_models(f"name='{NAME}.gate-lock'")


def test_a_run_left_running_by_a_dead_process_is_marked_failed_on_the_next_start(mlflow_env, capsys):
    """A SIGKILLed `train` cannot end its MLflow run; the next setup_mlflow on this host marks it FAILED (a run of
    a live process, and one of another host, stay RUNNING)."""
    import socket

    from rsdetect.registry.tracking import setup_mlflow

    mlflow = mlflow_env
    setup_mlflow()
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name("rsdetect").experiment_id
    host = socket.gethostname()
    runs = {name: client.create_run(exp, run_name=name, tags={"rsdetect.host": h, "rsdetect.pid": str(pid)}).info.run_id
            for name, h, pid in [("killed", host, dead_pid()), ("alive", host, os.getpid()),
                                 ("elsewhere", "another-host", dead_pid())]}
    setup_mlflow()
    status = {name: client.get_run(rid).info.status for name, rid in runs.items()}
    assert status == {"killed": "FAILED", "alive": "RUNNING", "elsewhere": "RUNNING"}
    err = capsys.readouterr().err
    assert f"run {runs['killed']} (killed) was left RUNNING by process" in err and "marked FAILED" in err
    for rid in (runs["alive"], runs["elsewhere"]):
        client.set_terminated(rid)


@pytest.mark.slow
def test_a_registered_model_carries_the_video_params_to_a_host_without_params_yaml(tmp_path, mlflow_env, capsys):
    # A host that scans with models:/rs-detector@champion and has no checkout (no params.yaml) had scored video frames
    # by the single-frame model alone (at chance at realistic magnitudes: issue 21). The register stage saves the
    # shear and video.analysis params in the version's model config; scan there measures the video with them.
    from rsdetect import cli
    from rsdetect.config import load_params, serving_params
    from rsdetect.serve.loaders import registered_serving

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    serving = serving_params(params)
    paths, labels, _ = make_test_frames(tmp_path)
    good, other = tmp_path / "good.keras", tmp_path / "other.keras"
    colour_model(0.08).save(good)
    colour_model(0.08, 0.05).save(other)

    def register(path, serving):
        return register_candidate(path, S, 0.5, {"roc_auc": true_auc(path, paths, labels)}, paths, labels, NAME,
                                  ALIAS, "roc_auc", {}, tolerance=1e-6, serving=serving)

    # registered before the params were saved (an existing registry), then again by a pipeline that saves them:
    # the same checkpoint takes the alias with them
    uri = f"models:/{NAME}@{ALIAS}"
    assert register(good, None)["promoted"] and registered_serving(uri) is None
    r1 = register(good, serving)
    assert (r1["version"], r1["promoted"], r1["renewed"]) == ("2", True, True)
    assert registered_serving(uri) == (params.shear, params.video.analysis)

    host = tmp_path / "host"
    host.mkdir()
    writer = cv2.VideoWriter(str(host / "cam.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for _ in range(10):
        writer.write(np.full((48, 64, 3), 120, np.uint8))
    writer.release()
    os.chdir(host)  # mlflow_env's monkeypatch.chdir puts the working folder back

    def scan(model, out):
        cli.main(["scan", "cam.avi", "--model", model, "--out", out])
        summary = json.loads((host / out / "summary.json").read_text())
        rows = [json.loads(line) for line in (host / out / "frames.jsonl").read_text().splitlines()]
        return summary["video_evidence"], {r["evidence"] for r in rows}

    evidence, kinds = scan(uri, "out")
    assert evidence and "cnn" not in kinds

    # the pipeline's video params change: the champion's own checkpoint registers again with them and takes the
    # alias (a tie on the test set would otherwise leave the host measuring with the old ones)
    changed = {**serving, "video_analysis": {**serving["video_analysis"], "flicker_every": 4}}
    r2 = register(good, changed)
    assert (r2["version"], r2["promoted"], r2["renewed"]) == ("3", True, True)
    assert "own checkpoint with this pipeline's serving params" in register_summary(r2)
    assert registered_serving(uri)[1].flicker_every == 4
    r3 = register(good, changed)  # idempotent as before
    assert r3["already_registered"] and r3["version"] == "3" and not r3["renewed"]
    # another checkpoint that does not beat the champion is no renewal: the alias stays
    r4 = register(other, None)  # registered as before this change: no serving params in its config
    assert r4["version"] == "4" and not r4["renewed"] and r4["champion_version"] == "3"
    assert registered_serving(f"models:/{NAME}/4") is None
    evidence, kinds = scan(f"models:/{NAME}/4", "out4")
    assert not evidence and kinds == {"cnn"}  # the model alone, and the summary says why
    # bad saved params: one line naming the model and the param
    bad = {**serving, "video_analysis": {**serving["video_analysis"], "flicker_hz": []}}
    assert register(other, bad)["version"] == "5"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        scan(f"models:/{NAME}/5", "out5")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"models:/{NAME}/5 (its model config): video_analysis.flicker_hz" in err, err
