"""rsdetect export (TFLite, ONNX) agrees with Keras and feeds `scan`; the pyfunc serves over HTTP."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from rsdetect import cli  # noqa: E402
from rsdetect.errors import RsdetectError  # noqa: E402
from rsdetect.serve.export import check_inputs, export_model, sidecar_path  # noqa: E402

from conftest import COLOUR_GAIN, ROOT, colour_model  # noqa: E402

SIZE = 32
GAIN = COLOUR_GAIN




def conv_model(seed: int = 0) -> keras.Model:
    """A small random conv net with BatchNorm and hard-swish, whose outputs vary with the image (unlike an
    untrained MobileNetV3, whose output collapses to a constant), so agreement checks mean something."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("hard_swish")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    colour_model(SIZE).save(d / "colour.keras")
    conv_model().save(d / "conv.keras")
    return d


def write_video(path: Path, red_at: set[int], n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(n):
        img = np.empty((48, 64, 3), np.uint8)
        img[:] = (50, 90, 200) if i in red_at else (200, 90, 50)
        writer.write(img)
    writer.release()
    return path


def litert_probs(path: Path, x: np.ndarray) -> np.ndarray:
    """Score with ai_edge_litert directly (not through rsdetect's loader)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).reshape(-1)


def scanned_flags(out: Path) -> list[tuple[int, bool]]:
    return [(r["frame_index"], r["flag"]) for r in map(json.loads, (out / "frames.jsonl").read_text().splitlines())]


# ---------------------------------------------------------------- TFLite

def test_tflite_export_agrees_with_keras(tmp_path, models_dir, capsys) -> None:
    out = tmp_path / "conv.tflite"
    cli.main(["export", "--model", str(models_dir / "conv.keras"), "--format", "tflite", "--out", str(out)])
    assert "max |p - p_keras|" in capsys.readouterr().out
    keras_model = keras.saving.load_model(models_dir / "conv.keras")
    x = np.random.default_rng(7).uniform(0, 255, (6, SIZE, SIZE, 3)).astype(np.float32)
    ref = keras_model(x, training=False).numpy().reshape(-1)
    assert np.ptp(ref) > 1e-3  # the outputs differ per image, so the comparison is not trivially true
    assert np.abs(litert_probs(out, x) - ref).max() < 1e-4
    meta = json.loads(sidecar_path(out).read_text())  # run where params.yaml is: its serving params are kept
    assert "threshold" not in meta and set(meta["serving"]) == {"shear", "video_analysis"}  # a .keras file: none


def test_tflite_scorer_split_between_interpreters_scores_as_one(tmp_path, models_dir) -> None:
    """scan's TFLite scorer splits each batch between one single-threaded interpreter per core; every split gives
    each tile the probability one interpreter gives it alone (to 1e-6), including odd sizes and one tile."""
    from rsdetect.serve.loaders import tflite_scorer

    path = tmp_path / "conv.tflite"
    export_model(str(models_dir / "conv.keras"), "tflite", path)
    x = np.random.default_rng(3).uniform(0, 255, (7, SIZE, SIZE, 3)).astype(np.float32)
    alone = np.concatenate([tflite_scorer(path, workers=1)[0](x[i:i + 1]) for i in range(len(x))])
    assert np.ptp(alone) > 1e-3
    for workers, threads in ((1, 2), (2, 1), (3, 1), (8, 1)):
        scorer, size = tflite_scorer(path, workers=workers, threads=threads)
        assert size == SIZE
        for n in (7, 5, 1, 7):  # batch sizes change: each interpreter is resized to its part
            assert np.abs(scorer(x[:n]) - alone[:n]).max() < 1e-6, (workers, threads, n)


def test_scan_accepts_tflite(tmp_path, models_dir, capsys) -> None:
    model = tmp_path / "colour.tflite"
    r = export_model(str(models_dir / "colour.keras"), "tflite", model)
    assert r["max_abs_diff"] < 1e-4 and r["image_size"] == SIZE
    video = write_video(tmp_path / "cam.avi", {2, 3, 7}, 10)
    flags = {}
    for kind, path in (("keras", models_dir / "colour.keras"), ("tflite", model)):
        cli.main(["scan", "--model-only", str(video), "--model", str(path), "--out", str(tmp_path / f"scan-{kind}"),
                  "--batch", "3"])
        flags[kind] = scanned_flags(tmp_path / f"scan-{kind}")
    capsys.readouterr()
    assert flags["tflite"] == flags["keras"]
    assert {i for i, f in flags["tflite"] if f} == {2, 3, 7}
    assert json.loads((tmp_path / "scan-tflite" / "summary.json").read_text())["model_kind"] == "tflite"


def test_an_exported_model_carries_the_video_params_to_a_host_without_params_yaml(tmp_path, models_dir, capsys,
                                                                                   monkeypatch) -> None:
    # A camera host gets the exported model, not the checkout: without params.yaml, scan had scored video frames by
    # the single-frame model alone (at chance at realistic magnitudes: issue 21). Exported where params.yaml is, the
    # model's sidecar keeps the shear and video.analysis params, and scan there measures the video.
    from rsdetect.config import load_params

    monkeypatch.chdir(ROOT)  # the checkout: export picks up its params.yaml
    cli.main(["export", "--model", str(models_dir / "colour.keras"), "--format", "tflite",
              "--out", str(tmp_path / "host" / "colour.tflite")])
    assert "video.analysis params from params.yaml saved beside it" in capsys.readouterr().out
    saved = json.loads(sidecar_path(tmp_path / "host" / "colour.tflite").read_text())["serving"]
    assert saved["video_analysis"]["flicker_hz"] == list(load_params(ROOT / "params.yaml").video.analysis.flicker_hz)
    video = write_video(tmp_path / "host" / "cam.avi", set(), 10)
    monkeypatch.chdir(tmp_path / "host")  # the host: no params.yaml
    cli.main(["scan", str(video), "--model", "colour.tflite", "--out", "out"])
    summary = json.loads((tmp_path / "host" / "out" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "host" / "out" / "frames.jsonl").read_text().splitlines()]
    assert summary["video_evidence"] and all(r["evidence"] != "cnn" for r in rows)
    # a sidecar without them (an older export): scored by the model alone, and the summary says why
    sidecar_path(tmp_path / "host" / "colour.tflite").write_text(json.dumps({"threshold": 0.5}))
    cli.main(["scan", str(video), "--model", "colour.tflite", "--out", "out2"])
    summary = json.loads((tmp_path / "host" / "out2" / "summary.json").read_text())
    assert not summary["video_evidence"]
    # saved before a param existed (an export of an earlier rsdetect): read with the value that does what it did then
    older = {**saved, "video_analysis": {k: v for k, v in saved["video_analysis"].items()
                                         if k != "roll_camera_work_px"}}
    sidecar_path(tmp_path / "host" / "colour.tflite").write_text(json.dumps({"serving": older}))
    cli.main(["scan", str(video), "--model", "colour.tflite", "--out", "out4"])
    assert json.loads((tmp_path / "host" / "out4" / "summary.json").read_text())["video_evidence"]
    # bad saved params: one line naming the sidecar and the param
    bad = {**saved, "video_analysis": {**saved["video_analysis"], "flicker_hz": []}}
    sidecar_path(tmp_path / "host" / "colour.tflite").write_text(json.dumps({"serving": bad}))
    with pytest.raises(SystemExit):
        cli.main(["scan", str(video), "--model", "colour.tflite", "--out", "out3"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "colour.tflite.json: video_analysis.flicker_hz" in err, err


def test_export_refuses_a_model_that_disagrees(tmp_path, models_dir, monkeypatch) -> None:
    from rsdetect.serve import loaders

    real = loaders.tflite_scorer

    def off_by_a_bit(path):
        scorer, size = real(path)
        return (lambda batch: scorer(batch) + 1e-3), size

    monkeypatch.setattr(loaders, "tflite_scorer", off_by_a_bit)
    out = tmp_path / "bad.tflite"
    with pytest.raises(RsdetectError, match="disagrees with Keras"):
        export_model(str(models_dir / "colour.keras"), "tflite", out)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left
    with pytest.raises(RsdetectError, match="use a .tflite file name"):
        export_model(str(models_dir / "colour.keras"), "tflite", tmp_path / "x.onnx")


# ---------------------------------------------------------------- ONNX

def test_onnx_export(tmp_path, models_dir, capsys, monkeypatch) -> None:
    out = tmp_path / "conv.onnx"
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit) as exc:
            cli.main(["export", "--model", str(models_dir / "conv.keras"), "--format", "onnx", "--out", str(out)])
        assert exc.value.code == 2 and "tf2onnx" in capsys.readouterr().err
        return
    r = export_model(str(models_dir / "conv.keras"), "onnx", out)
    assert r["max_abs_diff"] < 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = check_inputs(SIZE, 6, seed=3)
    ref = keras.saving.load_model(models_dir / "conv.keras")(x, training=False).numpy().reshape(-1)
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x})[0].reshape(-1) - ref).max() < 1e-4
    video = write_video(tmp_path / "cam.avi", {1}, 4)
    cli.main(["scan", "--model-only", str(video), "--model", str(out), "--out", str(tmp_path / "scan")])
    assert json.loads((tmp_path / "scan" / "summary.json").read_text())["cameras"]["cam"]["frames_scored"] == 4
    # Without tf2onnx installed, --format onnx fails with one line saying why.
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "--model", str(models_dir / "conv.keras"), "--format", "onnx", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "tf2onnx" in err and err.count("\n") == 1


# ---------------------------------------------------------------- pyfunc: exported threshold and HTTP serving

@pytest.fixture(scope="module")
def pyfunc_dir(tmp_path_factory, models_dir) -> Path:
    import mlflow

    from rsdetect.registry.pyfunc import RsDetector

    path = tmp_path_factory.mktemp("pyfunc") / "rs-detector"
    mlflow.pyfunc.save_model(str(path), python_model=RsDetector(),
                             artifacts={"keras_model": str(models_dir / "colour.keras")},
                             model_config={"threshold": 0.9, "image_size": SIZE}, pip_requirements=["rsdetect"])
    return path


def test_export_from_pyfunc_keeps_threshold(tmp_path, pyfunc_dir, capsys) -> None:
    out = tmp_path / "m.tflite"
    r = export_model(str(pyfunc_dir), "tflite", out)
    assert r["threshold"] == 0.9 and json.loads(sidecar_path(out).read_text())["threshold"] == 0.9
    img = tmp_path / "mid.png"
    cv2.imwrite(str(img), np.full((48, 64, 3), (80, 90, 120), np.uint8))  # p = sigmoid(GAIN * 40) ~ 0.88
    cli.main(["scan", "--model-only", str(img), "--model", str(out), "--out", str(tmp_path / "scan")])
    s = json.loads((tmp_path / "scan" / "summary.json").read_text())
    assert s["threshold"] == 0.9 and s["cameras"]["mid"]["flagged"] == 0


def test_export_of_a_registered_model_keeps_its_serving_params(tmp_path, models_dir, capsys, monkeypatch) -> None:
    # exported on a host without params.yaml from a registered model (a pyfunc folder, as models:/ downloads one):
    # the shear and video.analysis params the register stage saved in its config go into the sidecar
    import mlflow

    from rsdetect.config import load_params, serving_params
    from rsdetect.registry.pyfunc import RsDetector

    serving = serving_params(load_params(ROOT / "params.yaml"))
    serving["video_analysis"]["flicker_every"] = 5  # not params.yaml's: it must come from the model
    path = tmp_path / "rs-detector"
    mlflow.pyfunc.save_model(str(path), python_model=RsDetector(),
                             artifacts={"keras_model": str(models_dir / "colour.keras")},
                             model_config={"threshold": 0.9, "image_size": SIZE, "serving": serving},
                             pip_requirements=["rsdetect"])
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    cli.main(["export", "--model", str(path), "--format", "tflite", "--out", "m.tflite"])
    assert f"params from {path}'s registration saved beside it" in capsys.readouterr().out
    assert json.loads(sidecar_path(tmp_path / "m.tflite").read_text())["serving"] == serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return resp.status, (json.loads(raw) if body is not None else raw)


@pytest.mark.slow
def test_mlflow_models_serve_answers(tmp_path, pyfunc_dir) -> None:
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    # mlflow execs `uvicorn` by name: the virtualenv's bin must be on PATH even when it is not activated.
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'unused.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(pyfunc_dir), "--env-manager", "local",
           "-p", str(port), "-h", "127.0.0.1", "--workers", "1"]
    # Own session, so the server and the workers it spawns can be stopped together by our process group id.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"server exited: {(log.seek(0), log.read()[-2000:])[1]}"
            try:
                if http_json(f"http://127.0.0.1:{port}/ping", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server did not answer /ping within 120 s"
            time.sleep(0.5)
        red = np.empty((48, 64, 3), np.uint8)
        red[:] = (50, 90, 200)
        blue = red[..., ::-1].copy()
        images = [base64.b64encode(cv2.imencode(".jpg", im)[1].tobytes()).decode() for im in (red, blue)]
        status, reply = http_json(f"http://127.0.0.1:{port}/invocations",
                                  {"dataframe_split": {"columns": ["image"], "data": [[b] for b in images]}},
                                  timeout=60)
        assert status == 200
        preds = reply["predictions"]
        assert [sorted(p) for p in preds] == [["flag", "probability", "tile"]] * 2
        assert preds[0]["tile"] in ("0,0,48,48", "16,0,48,48")  # 64x48 at 32 px: two tiles, x,y,w,h in the frame
        assert preds[0]["probability"] > 0.99 and preds[0]["flag"] is True
        assert preds[1]["probability"] < 0.01 and preds[1]["flag"] is False
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (workers included), SIGKILL after 15 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the whole group is gone already
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------- faults a new user ran into

def test_unwritable_out_fails_before_conversion(tmp_path, models_dir, capsys, monkeypatch) -> None:
    from rsdetect.serve import loaders

    def no_loading(spec):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(loaders, "resolve_keras", no_loading)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    (tmp_path / "dir.tflite").mkdir()
    for out, needle in ((blocker / "m.tflite", f"{blocker} is a file"),
                        ("/proc/rsdetect-nope/m.tflite", "cannot write in /proc"),
                        (tmp_path / "dir.tflite", "is a folder")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["export", "--model", str(models_dir / "colour.keras"), "--format", "tflite", "--out", str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "dir.tflite"]  # nothing written


def test_export_of_a_keras_file_that_is_not_a_model(tmp_path) -> None:
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"PK? no, just bytes")
    with pytest.raises(RsdetectError, match="not a Keras model file") as exc:
        export_model(str(fake), "tflite", tmp_path / "m.tflite")
    assert "not found" not in str(exc.value).lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


@pytest.mark.parametrize("text", ["{not json", "[0.5]"])
def test_a_sidecar_that_is_no_json_object_is_one_line_naming_it(tmp_path, text) -> None:
    from rsdetect.serve.loaders import exported_serving, exported_threshold

    model = tmp_path / "m.tflite"
    sidecar_path(model).write_text(text)
    for read in (exported_threshold, exported_serving):
        with pytest.raises(RsdetectError, match=r"m\.tflite\.json: not valid model metadata JSON$"):
            read(model)
    assert exported_threshold(tmp_path / "other.tflite") is None and exported_serving(tmp_path / "other.tflite") is None
