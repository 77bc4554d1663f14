"""rsdetect scan on generated videos/images with a tiny Keras model whose score is set by frame colour:
exact flagged positions (with and without smoothing), sampling, per-camera rates, failures, exit codes,
output formats and Ctrl-C.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from rsdetect import cli  # noqa: E402
from rsdetect.errors import RsdetectError  # noqa: E402
from rsdetect.serve.loaders import LoadedModel, load_model  # noqa: E402
from rsdetect.serve.reports import FIELDS, ROW_FIELDS, camera_ranking  # noqa: E402
from rsdetect.serve.scan import ScanOptions, run_scan  # noqa: E402
from rsdetect.serve.scoring import FlagStats, longest_run, smooth  # noqa: E402
from rsdetect.serve.signals import Interrupted, StopSignals, uninterrupted  # noqa: E402
from rsdetect.serve.sources import parse_sources  # noqa: E402

from conftest import COLOUR_GAIN, ROOT, colour_model  # noqa: E402

SIZE = 32  # model input; 64x48 frames are resized to 43x32 and scored as 2 tiles of 32x32
GAIN = COLOUR_GAIN
RED, BLUE = (200, 50), (50, 200)  # (R, B) of "distorted" and clean frames
QUIET = dict(progress=False)




@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "colour.keras"
    colour_model(SIZE).save(path)
    return path


@pytest.fixture(scope="module")
def model(model_path) -> LoadedModel:
    return load_model(str(model_path))


def frame(red: bool, w: int = 64, h: int = 48) -> np.ndarray:
    """A BGR frame: red-dominant ("distorted") or blue-dominant (clean)."""
    r, b = RED if red else BLUE
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (b, 90, r)
    return img


def write_video(path: Path, red_at: set[int], n: int, fps: float = 10.0) -> Path:
    """An MJPG .avi of n frames, red exactly at the indices in red_at."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(n):
        writer.write(frame(i in red_at))
    writer.release()
    return path


def write_images(folder: Path, red: list[bool]) -> Path:
    """PNG frames img_000.png... in a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, is_red in enumerate(red):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), frame(is_red))
    return folder


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def flagged(out: Path, camera: str) -> set[int]:
    return {r["frame_index"] for r in rows(out) if r["camera"] == camera and r["flag"]}


def scan_lines(err: str) -> list[str]:
    """The one-line reports in stderr (progress bars aside)."""
    return [line[line.index("scan: "):] for line in err.replace("\r", "\n").splitlines() if "scan: " in line]


# ---------------------------------------------------------------- pure functions

def test_flag_stats_read_the_shear_per_ms_p95_to_5_percent_in_constant_memory() -> None:
    # a watch counts a camera's shear per ms of readout into fixed bins, not a growing list: its 95th percentile is
    # within a bin (5%) of the exact one; stills (None) and static frames are not counted
    values = np.random.default_rng(0).lognormal(np.log(0.05), 1.0, 5000)
    stats = FlagStats()
    for v in values:
        stats.add(False, 0.0, per_ms=float(v))
    for _ in range(3000):
        stats.add(False, 0.0, static=True, per_ms=0.0)
        stats.add(False, 0.0, per_ms=None)
    exact = float(np.percentile(values, 95))
    assert exact <= stats.summary()["shear_px_per_ms_p95"] <= 1.05 * exact
    assert stats.per_ms.nbytes < 4096
    nothing, still = FlagStats(), FlagStats()
    still.add(False, 0.0, per_ms=0.0)
    assert nothing.per_ms_p95() is None and still.per_ms_p95() == 0.0


def test_smooth_is_rolling_mean_of_last_k() -> None:
    p = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.2])
    np.testing.assert_allclose(smooth(p, 1), p)
    naive = [np.mean(p[max(0, i - 2):i + 1]) for i in range(len(p))]
    np.testing.assert_allclose(smooth(p, 3), naive)
    np.testing.assert_allclose(smooth(p, 100), np.cumsum(p) / np.arange(1, 7))
    assert smooth([], 3).size == 0
    with pytest.raises(RsdetectError):
        smooth(p, 0)
    assert longest_run([True, True, False, True, True, True, False]) == 3
    assert longest_run([]) == 0


def test_parse_sources_names(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    va = write_video(tmp_path / "a" / "lobby.avi", set(), 2)
    vb = write_video(tmp_path / "b" / "lobby.avi", set(), 2)
    srcs = parse_sources([str(va), str(vb), f"door={va}", "http://127.0.0.1:9/live.mjpg?user=x",
                         str(tmp_path / "*.png")])
    assert [s.camera for s in srcs] == ["lobby", "lobby-2", "door", "live", tmp_path.name]
    assert [s.kind for s in srcs] == ["video", "video", "video", "stream", "images"]
    with pytest.raises(RsdetectError, match="used twice"):
        parse_sources([f"x={va}", f"x={vb}"])
    with pytest.raises(RsdetectError, match="no sources"):
        parse_sources([])


# ---------------------------------------------------------------- flags and smoothing

def test_flags_exactly_the_distorted_frames_k1(tmp_path, model) -> None:
    red = {3, 4, 5, 12, 20, 21}
    video = write_video(tmp_path / "cam.avi", red, 30)
    result = run_scan(parse_sources([str(video)]), model, tmp_path / "out", ScanOptions(batch=7, **QUIET))
    assert result.exit_code == 0
    assert flagged(result.out_dir, "cam") == red
    cam = result.summary["cameras"]["cam"]
    assert (cam["frames_scored"], cam["flagged"], cam["longest_flagged_run"], cam["failures"]) == (30, 6, 3, 0)
    assert cam["flagged_rate"] == pytest.approx(0.2)
    assert result.summary["threshold"] == 0.5  # plain .keras file: default threshold
    worst = cam["worst_frames"]
    assert len(worst) == 5 and {w["frame_index"] for w in worst} <= red
    for w in worst:
        img = cv2.imread(str(result.out_dir / w["path"]))
        assert img is not None and img.shape == (48, 64, 3)
        assert w["path"] == f"worst/cam_{w['frame_index']}.jpg"


def test_smoothing_needs_two_of_last_three(tmp_path, model) -> None:
    # K=3, threshold 0.5: a frame is flagged when >= 2 of the last 3 frames are red; the lone red frame 20 never is.
    red = {10, 11, 12, 20, 25, 26, 27, 28}
    video = write_video(tmp_path / "cam.avi", red, 32)
    result = run_scan(parse_sources([str(video)]), model, tmp_path / "out", ScanOptions(smooth=3, batch=5, **QUIET))
    assert flagged(result.out_dir, "cam") == {11, 12, 13, 26, 27, 28, 29}
    r = rows(result.out_dir)
    np.testing.assert_allclose([x["smoothed"] for x in r], smooth([x["probability"] for x in r], 3), atol=2e-6)
    assert result.summary["cameras"]["cam"]["longest_flagged_run"] == 4
    # Without smoothing the same video flags every red frame, including the lone one.
    raw = run_scan(parse_sources([str(video)]), model, tmp_path / "raw", ScanOptions(smooth=1, **QUIET))
    assert flagged(raw.out_dir, "cam") == red


def test_sampling_every_n_and_fps(tmp_path, model) -> None:
    video = write_video(tmp_path / "cam.avi", {3, 6, 9}, 20, fps=10)
    every = run_scan(parse_sources([str(video)]), model, tmp_path / "every", ScanOptions(every=3, **QUIET))
    r = rows(every.out_dir)
    assert [x["frame_index"] for x in r] == [0, 3, 6, 9, 12, 15, 18]
    assert [x["timestamp_s"] for x in r] == pytest.approx([i / 10 for i in range(0, 20, 3)])
    assert flagged(every.out_dir, "cam") == {3, 6, 9}
    fps = run_scan(parse_sources([str(video)]), model, tmp_path / "fps", ScanOptions(fps=2, **QUIET))
    assert [x["frame_index"] for x in rows(fps.out_dir)] == [0, 5, 10, 15]
    capped = run_scan(parse_sources([str(video)]), model, tmp_path / "cap", ScanOptions(max_frames=4, **QUIET))
    assert capped.exit_code == 0 and [x["frame_index"] for x in rows(capped.out_dir)] == [0, 1, 2, 3]


def test_two_cameras_rates_from_cameras_yaml(tmp_path, model) -> None:
    write_video(tmp_path / "lobby.avi", {0, 5, 10, 15}, 20)
    write_images(tmp_path / "gate", [i % 2 == 1 for i in range(10)])
    (tmp_path / "cameras.yaml").write_text("cameras:\n  lobby: lobby.avi\n  gate: gate\n")  # relative to the YAML
    result = run_scan(parse_sources([], str(tmp_path / "cameras.yaml")), model, tmp_path / "out",
                      ScanOptions(batch=8, **QUIET))
    cams = result.summary["cameras"]
    assert (cams["lobby"]["flagged_rate"], cams["gate"]["flagged_rate"]) == (pytest.approx(0.2), pytest.approx(0.5))
    assert (cams["lobby"]["frames_scored"], cams["gate"]["frames_scored"]) == (20, 10)
    assert flagged(result.out_dir, "gate") == {1, 3, 5, 7, 9}
    gate_rows = [x for x in rows(result.out_dir) if x["camera"] == "gate"]
    assert gate_rows[1]["source"].endswith("img_001.png") and gate_rows[1]["timestamp_s"] is None
    assert result.summary["totals"]["flagged_rate"] == pytest.approx(9 / 30)


# ---------------------------------------------------------------- failures and exit codes

def test_failing_sources_are_reported_counted_and_others_go_on(tmp_path, model_path, capsys) -> None:
    good = write_video(tmp_path / "good.avi", {1, 2}, 10)
    data = write_video(tmp_path / "cut.avi", set(range(20)), 20).read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:int(len(data) * 0.8)])  # index lost, 12 of 20 frames left
    folder = write_images(tmp_path / "shots", [True, False, True])
    (folder / "img_001.png").write_bytes(b"not a png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 garbage")
    with pytest.raises(SystemExit) as exc:
        cli.main(["scan", "--model-only", str(good), str(tmp_path / "missing.avi"), str(tmp_path / "corrupt.jpg"),
                  str(folder), "cam9=rtsp://admin:hunter2@127.0.0.1:9/x", str(tmp_path / "cut.avi"),
                  "--model", str(model_path), "--out", str(tmp_path / "out")])
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "hunter2" not in err  # stream passwords are not echoed
    lines = scan_lines(err)
    assert len(lines) == 5, lines  # one line per failure
    for camera, needle in [("missing", "no such file"), ("corrupt", "cannot decode"), ("shots", "img_001.png"),
                           ("cam9", "cannot open"), ("cut", "ended early after 12 of 20")]:
        assert any(line.startswith(f"scan: {camera}: ") and needle in line for line in lines), (camera, lines)
    cams = json.loads((tmp_path / "out" / "summary.json").read_text())["cameras"]
    failures = {name: c["failures"] for name, c in cams.items()}
    assert failures == {"good": 0, "missing": 1, "corrupt": 1, "shots": 1, "cam9": 1, "cut": 1}
    assert cams["good"]["frames_scored"] == 10 and cams["good"]["flagged"] == 2
    assert cams["shots"]["frames_scored"] == 2 and cams["shots"]["flagged"] == 2  # the images around the bad one
    assert cams["cut"]["frames_scored"] == 12 and cams["cut"]["flagged"] == 12  # frames before the cut still count
    assert flagged(tmp_path / "out", "shots") == {0, 2}
    assert cams["cam9"]["source"] == "rtsp://admin:***@127.0.0.1:9/x"


def test_exit_codes(tmp_path, model_path, capsys, monkeypatch) -> None:
    video = write_video(tmp_path / "v.avi", {1}, 4)
    # 0: returns
    cli.main(["scan", "--model-only", str(video), "--model", str(model_path), "--out", str(tmp_path / "ok")])
    assert "scan: 4 frames from 1 cameras, 1 flagged" in capsys.readouterr().out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'no-registry.db'}")
    for argv in (["--model", "models:/rs-detector@champion"], ["--model", str(tmp_path / "none.keras")],
                 ["--model", str(tmp_path / "v.avi")], ["--smooth", "0"], ["--threshold", "1.5"], ["--batch", "0"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["scan", "--model-only", str(video), "--model", str(model_path), "--out", str(tmp_path / "x"),
                      *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "no-registry.db").exists()  # no empty registry created as a side effect
    with pytest.raises(SystemExit) as exc:
        cli.main(["scan", "--model", str(model_path)])
    assert exc.value.code == 2 and "no sources" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: --every and --fps are exclusive
        cli.main(["scan", "--model-only", str(video), "--every", "2", "--fps", "1"])
    assert exc.value.code == 2


class Interrupting:
    """A scorer that presses Ctrl-C on its (n+1)-th call."""

    def __init__(self, scorer, n: int) -> None:
        self.scorer, self.n, self.calls = scorer, n, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        return self.scorer(batch)


def test_ctrl_c_writes_what_was_scored(tmp_path, model, monkeypatch, capsys) -> None:
    video = write_video(tmp_path / "cam.avi", {1, 5}, 30)
    second = write_video(tmp_path / "later.avi", {0}, 5)
    # 2 tiles a frame: a batch of 4 frames is 2 model calls of 4 tiles; the 5th call is interrupted.
    stopping = LoadedModel(Interrupting(model.scorer, 4), model.image_size, None, "keras", "test")
    result = run_scan(parse_sources([str(video), str(second)]), stopping, tmp_path / "out",
                      ScanOptions(batch=4, **QUIET))
    assert result.exit_code == 130 and result.interrupted
    assert [r["frame_index"] for r in rows(result.out_dir)] == list(range(8))  # two batches of 4
    with open(result.out_dir / "frames.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 8
    s = json.loads((result.out_dir / "summary.json").read_text())
    assert s["interrupted"] and s["exit_code"] == 130
    assert s["cameras"]["cam"]["frames_scored"] == 8 and s["cameras"]["cam"]["flagged"] == 2
    assert s["cameras"]["later"]["frames_scored"] == 0
    assert (result.out_dir / "flagged_rate.png").is_file()
    assert not [p for p in result.out_dir.iterdir() if p.name.startswith(".")]  # no temp files left
    # Through the CLI: exit code 130.
    monkeypatch.setattr("rsdetect.serve.loaders.load_model",
                        lambda spec: LoadedModel(Interrupting(model.scorer, 2), model.image_size, None, "keras", spec))
    with pytest.raises(SystemExit) as exc:
        cli.main(["scan", "--model-only", str(video), "--out", str(tmp_path / "cli"), "--batch", "4"])
    assert exc.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert len(rows(tmp_path / "cli")) == 4


# ---------------------------------------------------------------- outputs

def test_outputs_are_well_formed(tmp_path, model_path, capsys) -> None:
    video = write_video(tmp_path / "cam.avi", {2, 3}, 12)
    images = write_images(tmp_path / "stills", [False, True])
    out = tmp_path / "out"
    cli.main(["scan", "--model-only", str(video), str(images), "--model", str(model_path), "--out", str(out),
              "--annotate", "--every", "2"])
    capsys.readouterr()
    expected = {"frames.jsonl", "frames.csv", "summary.json", "flagged_rate.png", "worst", "annotated"}
    assert {p.name for p in out.iterdir()} == expected  # and no leftover temp files
    jl = rows(out)
    assert all(tuple(r) == ROW_FIELDS for r in jl) and len(jl) == 6 + 1  # 12 frames every 2nd; 2 stills
    assert all(r["unroll"] is None for r in jl)  # the model scored these: nothing measured to undo
    with open(out / "frames.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == FIELDS
        table = list(reader)
    assert [(r["camera"], int(r["frame_index"]), r["flag"]) for r in table] == \
           [(r["camera"], r["frame_index"], str(r["flag"])) for r in jl]
    assert (out / "flagged_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = json.loads((out / "summary.json").read_text())
    assert set(s["cameras"]) == {"cam", "stills"}
    for c in s["cameras"].values():
        assert {"frames_scored", "flagged", "flagged_rate", "longest_flagged_run", "worst_frames", "failures"} <= set(c)
        for w in c["worst_frames"]:
            assert (out / w["path"]).is_file()
    cap = cv2.VideoCapture(str(out / s["cameras"]["cam"]["annotated_video"]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12  # every frame, scored or carried forward
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape == (48, 64, 3)
    assert "annotated_video" not in s["cameras"]["stills"]


@pytest.mark.slow
def test_registered_model_threshold_is_the_default(tmp_path, model_path, monkeypatch, capsys) -> None:
    """A models:/ URI loads through MLflow, takes its threshold from the model config; --threshold overrides."""
    import mlflow

    from rsdetect.registry.pyfunc import RsDetector

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=RsDetector(), artifacts={"keras_model": str(model_path)},
                                model_config={"threshold": 0.9, "image_size": SIZE}, registered_model_name="tiny",
                                pip_requirements=["rsdetect"])
    mlflow.MlflowClient().set_registered_model_alias("tiny", "champion", "1")
    # p = sigmoid(GAIN * 40) ~ 0.88: flagged at 0.5, not at the registered 0.9.
    (tmp_path / "mid.png").write_bytes(cv2.imencode(".png", np.full((48, 64, 3), (80, 90, 120), np.uint8))[1].tobytes())
    loaded = load_model("models:/tiny@champion")
    assert (loaded.threshold, loaded.image_size, loaded.kind) == (0.9, SIZE, "pyfunc-keras")
    registered = run_scan(parse_sources([str(tmp_path / "mid.png")]), loaded, tmp_path / "a", ScanOptions(**QUIET))
    assert registered.summary["threshold"] == 0.9 and registered.summary["cameras"]["mid"]["flagged"] == 0
    override = run_scan(parse_sources([str(tmp_path / "mid.png")]), loaded, tmp_path / "b",
                        ScanOptions(threshold=0.5, **QUIET))
    assert override.summary["cameras"]["mid"]["flagged"] == 1
    assert rows(tmp_path / "a")[0]["probability"] == pytest.approx(1 / (1 + np.exp(-GAIN * 40)), abs=1e-3)
    capsys.readouterr()  # MLflow's own logging while registering
    with pytest.raises(SystemExit) as exc:
        cli.main(["scan", "--model-only", str(tmp_path / "mid.png"), "--model", "models:/tiny@nope",
                  "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "models:/tiny@nope" in err


# ---------------------------------------------------------------- faults a new user ran into

def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a usage error: exit 2 and exactly one line on stderr, no traceback."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    return err


def test_bad_out_fails_before_the_model_loads(tmp_path, model_path, capsys, monkeypatch) -> None:
    video = write_video(tmp_path / "v.avi", {1}, 4)
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a file, not a folder")

    def no_loading(spec):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr("rsdetect.serve.loaders.load_model", no_loading)
    base = ["scan", "--model-only", str(video), "--model", str(model_path), "--out"]
    assert "is a file, not a folder" in one_line_error(capsys, [*base, str(blocker)])
    assert f"{blocker} is a file" in one_line_error(capsys, [*base, str(blocker / "sub")])
    # read-only even for root
    assert "cannot write in /proc" in one_line_error(capsys, [*base, "/proc/rsdetect-nope/out"])
    # A folder with other things in it is not replaced by reports (the swap would delete them).
    assert "not rsdetect reports (blocker.txt, ...)" in one_line_error(capsys, [*base, str(tmp_path)])
    assert blocker.read_text() == "a file, not a folder" and video.is_file()


def test_fps_nan_and_a_keras_file_that_is_not_a_model(tmp_path, model_path, capsys) -> None:
    video = write_video(tmp_path / "v.avi", {1}, 4)
    for fps in ("nan", "inf", "-1"):
        err = one_line_error(capsys, ["scan", "--model-only", str(video), "--model", str(model_path), "--fps", fps,
                                      "--out", str(tmp_path / "out")])
        assert "--fps must be" in err and fps in err
    assert not (tmp_path / "out").exists()  # refused before any folder is made
    fake = tmp_path / "notes.keras"
    fake.write_text("these are my notes, not a model")
    err = one_line_error(capsys, ["scan", "--model-only", str(video), "--model", str(fake),
                                  "--out", str(tmp_path / "out")])
    assert "not a Keras model file" in err and "not found" not in err.lower()
    assert not list((tmp_path / "out").glob("*")) and not list(tmp_path.glob(".*"))  # no reports, no lock left


def test_cameras_whose_names_sanitize_alike_get_their_own_files(tmp_path, model) -> None:
    write_images(tmp_path / "red", [True, True])
    write_images(tmp_path / "blue", [False])
    (tmp_path / "cameras.yaml").write_text("cameras:\n  'a b': red\n  'a_b': blue\n")
    result = run_scan(parse_sources([], str(tmp_path / "cameras.yaml")), model, tmp_path / "out", ScanOptions(**QUIET))
    cams = result.summary["cameras"]
    paths = [w["path"] for c in cams.values() for w in c["worst_frames"]]
    assert len(paths) == len(set(paths)) == 3
    for name, red in (("a b", True), ("a_b", False)):
        for w in cams[name]["worst_frames"]:
            b, _, r = cv2.imread(str(result.out_dir / w["path"]))[0, 0].astype(int)
            assert (r > b) == red, (name, w)  # each entry shows its own camera's frame, not the other's


def test_a_second_scan_into_the_same_folder_is_refused(tmp_path, model_path, capsys) -> None:
    from rsdetect.serve.report_dir import lock_path
    from rsdetect.serve.scan import claim

    video = write_video(tmp_path / "v.avi", {1}, 4)
    out = tmp_path / "out"
    argv = ["scan", "--model-only", str(video), "--model", str(model_path), "--out", str(out)]
    cli.main(argv)
    capsys.readouterr()
    before = (out / "summary.json").read_bytes()
    with claim(out):  # a scan in progress
        assert lock_path(out).is_file()
        assert "another scan or watch is writing there now" in one_line_error(capsys, [*argv, "--every", "2"])
        assert (out / "summary.json").read_bytes() == before
    assert not lock_path(out).exists()  # released with its file
    cli.main([*argv, "--every", "2"])
    assert json.loads((out / "summary.json").read_text())["every"] == 2


def test_ctrl_c_twice_keeps_one_consistent_report_set(tmp_path, model, monkeypatch, capfd) -> None:
    """The second Ctrl-C lands while the reports are written: they still describe one scan, the new one."""
    import os
    import signal

    from rsdetect.serve import scan

    video = write_video(tmp_path / "cam.avi", {1, 5}, 30)
    old = run_scan(parse_sources([str(video), str(write_images(tmp_path / "gone", [True]))]), model,
                   tmp_path / "out", ScanOptions(**QUIET))
    assert old.summary["totals"]["frames_scored"] == 31 and (old.out_dir / "worst" / "gone_0.jpg").is_file()
    real_chart = scan.flagged_rate_chart

    def chart_then_ctrl_c(*args):
        os.kill(os.getpid(), signal.SIGINT)  # handled before the next line runs
        return real_chart(*args)

    monkeypatch.setattr(scan, "flagged_rate_chart", chart_then_ctrl_c)
    stopping = LoadedModel(Interrupting(model.scorer, 4), model.image_size, None, "keras", "second")
    result = run_scan(parse_sources([str(video)]), stopping, tmp_path / "out", ScanOptions(batch=4, **QUIET))
    assert result.exit_code == 130
    assert "scan: SIGINT: already stopping; finishing the reports first" in capfd.readouterr().err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["model"] == "second" and s["interrupted"] and set(s["cameras"]) == {"cam"}
    assert s["cameras"]["cam"]["frames_scored"] == len(rows(tmp_path / "out")) == 8
    assert not (tmp_path / "out" / "worst" / "gone_0.jpg").exists()  # the old scan's files went with it
    assert not [p for p in tmp_path.rglob(".*")]  # no staging folder, lock or temp file left


def test_a_signal_in_a_held_block_interrupts_when_the_block_ends() -> None:
    """A frame is counted in its camera's state and its row written, or neither: SIGTERM inside the block that
    does both is kept until the block ends, then interrupts; outside any StopSignals nothing is held."""
    finished = []
    with StopSignals("scan") as signals:
        with pytest.raises(Interrupted) as info:
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler runs here, inside the block
                finished.append("block")
        assert finished == ["block"] and info.value.signum == signal.SIGTERM and signals.deferring
        with uninterrupted():  # deferring now: a later signal is only announced
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    assert StopSignals.active is None
    with uninterrupted():  # none active: a plain block
        finished.append("plain")
    assert finished == ["block", "plain"]


@pytest.mark.slow
def test_sigterm_writes_the_reports_of_what_was_scored(tmp_path, model_path) -> None:
    """`rsdetect scan` in its own process, sent SIGTERM while it scores: exit 143, reports whole and consistent."""
    import re
    import subprocess
    import sys
    import threading

    n = 3000  # frames: at --batch 1 far more than are scored in the moments before the signal
    video = write_video(tmp_path / "cam.avi", set(range(0, n, 7)), n)
    out = tmp_path / "out"
    (out / "worst").mkdir(parents=True)  # an earlier scan's reports, to be replaced whole
    (out / "summary.json").write_text('{"old": true}\n')
    (out / "worst" / "old_1.jpg").write_bytes(b"old")
    pythonpath = os.pathsep.join([str(Path(cli.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    proc = subprocess.Popen([sys.executable, "-m", "rsdetect.cli", "scan", "--model-only", str(video),
                             "--model", str(model_path), "--out", str(out), "--batch", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(64), "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any(int(c) >= 5 for c in re.findall(rf"(\d+)/{n}", "".join(seen))):  # the progress bar
            assert proc.poll() is None and time.monotonic() < deadline, "".join(seen)[-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    err = "".join(seen)
    assert "Traceback" not in err and "interrupted" in err
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] and s["exit_code"] == 143
    scored = s["cameras"]["cam"]["frames_scored"]
    assert 5 <= scored < n and len(rows(out)) == scored
    with open(out / "frames.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == scored
    assert s["cameras"]["cam"]["flagged"] == len(flagged(out, "cam")) == len([i for i in range(scored) if i % 7 == 0])
    assert {p.name for p in out.iterdir()} == {"frames.jsonl", "frames.csv", "summary.json", "flagged_rate.png",
                                               "worst"}
    assert all((out / w["path"]).is_file() for w in s["cameras"]["cam"]["worst_frames"])
    assert not (out / "worst" / "old_1.jpg").exists()
    assert not [p for p in tmp_path.rglob(".*")]  # no .tmp, staging folder or lock left


# ---------------------------------------------------------------- explaining flags (rsdetect.serve.explain)

def striped(red: bool, shear: float, w: int = 96, h: int = 64) -> np.ndarray:
    """A BGR frame of 16 px vertical stripes leaning by `shear` px over its height (sheared as a rolling shutter
    does, rows moved by a bilinear remap): red-dominant ("distorted") or blue."""
    from rsdetect.shutter import warp_rows

    r, b = RED if red else BLUE
    dark = (np.arange(w) // 16 % 2 == 0)[None, :, None]
    colour = np.array([b, 90, r])
    upright = np.broadcast_to(np.where(dark, colour // 3, colour), (h, w, 3)).astype(np.uint8)
    return warp_rows(np.ascontiguousarray(upright), shear * np.arange(h) / (h - 1), np.zeros(h))


def test_worst_frames_get_heatmaps_shear_and_a_deskewed_preview(tmp_path, model_path, capsys) -> None:
    folder = tmp_path / "stills"
    folder.mkdir()
    for i, (red, shear) in enumerate([(True, 12.0), (False, 0.0), (True, -12.0)]):
        cv2.imwrite(str(folder / f"img_{i}.png"), striped(red, shear))
    out = tmp_path / "out"
    cli.main(["scan", "--model-only", str(folder), "--model", str(model_path), "--out", str(out),
              "--params", str(ROOT / "params.yaml")])
    capsys.readouterr()
    by_index = {r["frame_index"]: r for r in rows(out)}
    assert [by_index[i]["flag"] for i in range(3)] == [True, False, True]
    assert by_index[1]["shear_px"] is None and by_index[1]["shear_direction"] is None  # not flagged: not measured
    assert by_index[0]["shear_direction"] == "right" and by_index[2]["shear_direction"] == "left"
    assert by_index[0]["shear_px"] == pytest.approx(12.0, abs=4.0)
    s = json.loads((out / "summary.json").read_text())
    worst = s["cameras"]["stills"]["worst_frames"]
    assert len(worst) == 3
    for w in worst:
        assert (out / w["cam_path"]).is_file() and w["cam_path"] == w["path"].replace(".jpg", "_cam.jpg")
        assert cv2.imread(str(out / w["cam_path"])).shape == (64, 96, 3)
        if w["frame_index"] == 1:  # blue: nothing raises the score, the map is flat
            assert w["cam_peak"] is None
            continue
        x, y = w["cam_peak"]
        tx, ty, tw, th = map(int, w["tile"].split(","))
        assert tx <= x < tx + tw and ty <= y < ty + th  # the peak lies on the tile that fired
        assert (out / w["deskew_path"]).is_file() and w["shear_direction"] in ("left", "right")
    assert s["explain"]["heatmaps"] == 3 and s["explain"]["heatmaps_skipped"] == 0
    assert s["explain"]["shear_measured"] == 2 + 3  # the two flagged rows, and the three worst frames


def test_a_model_that_is_not_keras_skips_heatmaps_and_says_so_once(tmp_path, model, monkeypatch) -> None:
    from rsdetect.serve.explain import Explainer

    images = write_images(tmp_path / "stills", [True, False, True])
    exported = LoadedModel(model.scorer, model.image_size, None, "onnx", "model.onnx")  # no Keras model behind it
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the CLI would skip the shear estimate (serve_params)
    shear, analysis, note = cli.serve_params(None)
    assert analysis is None
    assert shear is None and "params.yaml" in note
    result = run_scan(parse_sources([str(images)]), exported, tmp_path / "out", ScanOptions(**QUIET),
                      explain=Explainer(None, exported.image_size, exported.kind, shear, note))
    e = result.summary["explain"]
    assert e["heatmaps"] == 0 and e["heatmaps_skipped"] == 3 and "onnx" in e["heatmaps_skipped_reason"]
    assert e["shear_skipped"] == 2 + 3 and "params.yaml" in e["shear_skipped_reason"]
    assert not list((tmp_path / "out" / "worst").glob("*_cam.jpg"))
    assert all(w["cam_path"] is None for w in result.summary["cameras"]["stills"]["worst_frames"])


def test_annotated_video_shows_the_heatmap_of_flagged_frames(tmp_path, model) -> None:
    from rsdetect.serve.explain import Explainer

    video = write_video(tmp_path / "cam.avi", {2, 3, 7}, 10)
    explain = Explainer(model.keras_model, model.image_size, model.kind, None)
    result = run_scan(parse_sources([str(video)]), model, tmp_path / "out", ScanOptions(annotate=True, **QUIET),
                      explain=explain)
    assert result.summary["explain"]["video_heatmaps"] == 3
    cap = cv2.VideoCapture(str(tmp_path / "out" / result.summary["cameras"]["cam"]["annotated_video"]))
    frames = [cap.read()[1] for _ in range(10)]
    cap.release()
    plain = cv2.VideoCapture(str(video))
    originals = [plain.read()[1] for _ in range(10)]
    plain.release()
    body = slice(20, None)  # below the score banner
    changed = [float(np.abs(a[body].astype(int) - b[body].astype(int)).mean())
               for a, b in zip(frames, originals, strict=False)]
    assert min(changed[i] for i in (2, 3, 7)) > 5 * max(changed[i] for i in (0, 1, 5, 9))


# ---------------------------------------------------------------- a decoder that crashes

def test_a_camera_whose_decoder_aborts_fails_alone(tmp_path, model, capfd) -> None:
    """Three cameras, the middle one's decoder dies in native code (SIGABRT, as a real AVI made OpenCV's): the
    other two are scored and reported in full, the dead one keeps the frames it gave and fails in one line, exit 3."""
    from crashing_source import AbortingSource

    sources = parse_sources([f"a={write_video(tmp_path / 'a.avi', {1}, 6)}",
                             f"c={write_video(tmp_path / 'c.avi', {2}, 5)}"])
    sources.insert(1, AbortingSource("b", str(tmp_path / "b.avi"), good=2))
    result = run_scan(sources, model, tmp_path / "out", ScanOptions(**QUIET))
    assert result.exit_code == 3 and not result.interrupted
    cams = result.summary["cameras"]
    assert {k: (v["frames_scored"], v["failures"]) for k, v in cams.items()} == {"a": (6, 0), "b": (2, 1), "c": (5, 0)}
    assert flagged(tmp_path / "out", "a") == {1} and flagged(tmp_path / "out", "c") == {2}
    message = f"{tmp_path / 'b.avi'}: the decoder process was killed by SIGABRT (a crash in native decoding code); " \
              "this camera stops"
    assert cams["b"]["errors"] == [message]
    assert f"scan: b: {message}" in scan_lines(capfd.readouterr().err)


def test_the_cameras_that_distort_most_are_named_flagged_first_then_unknown_readouts_by_shear_per_ms() -> None:
    """scan's last lines (camera_ranking): flagged cameras by flagged rate with their readout; cameras never flagged
    for want of a readout by shear per ms of readout, in px at a typical readout; five at most, and how many more."""
    def camera(flagged: int, rate: float, per_ms: float | None, ms: float | None, source: str = "unknown") -> dict:
        return {"flagged": flagged, "flagged_rate": rate, "shear_px_per_ms_p95": per_ms,
                "readout": {"ms": ms, "source": source}}

    cameras = {"gate": camera(3, 0.03, 0.5, 18.0, "configured"), "dock": camera(9, 0.09, 0.2, 21.25, "estimated"),
               "stills": {"flagged": 1, "flagged_rate": 0.5, "shear_px_per_ms_p95": None, "readout": None},
               "lobby": camera(0, 0.0, None, None),  # nothing moved
               **{f"road{i}": camera(0, 0.0, 0.1 * i, None) for i in range(1, 8)}}
    assert camera_ranking(cameras, 15.7) == [
        "most flagged: stills 50.0%, dock 9.0% (readout 21.25 ms, estimated), gate 3.0% (readout 18 ms, configured)",
        "readout unknown (never flagged), most shear per ms of readout (p95): road7 0.700 px/ms (11.0 px at a typical "
        "15.7 ms), road6 0.600 px/ms (9.4 px), road5 0.500 px/ms (7.8 px), road4 0.400 px/ms (6.3 px), road3 0.300 "
        "px/ms (4.7 px) and 2 more; give their readout_ms to flag them"]
    assert camera_ranking({"lobby": camera(0, 0.0, None, None)}, 15.7) == []  # nothing to name
    assert camera_ranking({"road": camera(0, 0.0, 0.25, None)}, None) == [  # --model-only: no typical readout
        "readout unknown (never flagged), most shear per ms of readout (p95): road 0.250 px/ms; give their "
        "readout_ms to flag them"]
