"""rsdetect watch on real MJPEG-over-HTTP cameras (tests/mjpeg_server.py, read by OpenCV's FFmpeg backend) with a
tiny Keras model whose score is set by frame colour: metrics scraped over HTTP against frames.jsonl, a camera
that drops and comes back (or stalls) while another goes on, rotation of the rolling log, SIGTERM on the real
command, and the one-line errors of bad flags.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import typing
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from prometheus_client import generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from rsdetect import cli  # noqa: E402
from rsdetect.config import load_params  # noqa: E402
from rsdetect.errors import RsdetectError  # noqa: E402
from rsdetect.serve.explain import Explainer  # noqa: E402
from rsdetect.serve.loaders import LoadedModel, load_model  # noqa: E402
from rsdetect.serve.reports import ROW_FIELDS  # noqa: E402
from rsdetect.serve.scan import ScanOptions, run_scan  # noqa: E402
from rsdetect.serve.sources import parse_sources  # noqa: E402
from rsdetect.serve.watch.loop import CameraLoop, WatchOptions, run_watch, watch_claim  # noqa: E402
from rsdetect.serve.watch.metrics import MetricsServer, WatchMetrics  # noqa: E402
from rsdetect.serve.watch.reports import RollingLog, WatchReports  # noqa: E402

from conftest import colour_model  # noqa: E402
from mjpeg_server import MjpegCamera, solid  # noqa: E402

SIZE = 32
RED, BLUE = (50, 90, 200), (200, 90, 50)  # BGR: p ~0.9995 and ~0.0005 under the colour model
# Quick reconnects for tests; a queue larger than any test's frames, so no frame is dropped and counts are exact.
FAST = dict(batch=4, reconnect_initial=0.2, reconnect_max=0.4, stall_timeout=2.0, summary_interval=0.3,
            queue_frames=256)


def every_third_red(i: int):
    return solid(RED if i % 3 == 0 else BLUE)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "colour.keras"
    colour_model(SIZE).save(path)
    return path


@pytest.fixture(scope="module")
def model(model_path) -> LoadedModel:
    return load_model(str(model_path))


def rows(out: Path, camera: str | None = None) -> list[dict]:
    got = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    return [r for r in got if camera is None or r["camera"] == camera]


def scrape(url: str) -> dict[tuple[str, str], float]:
    """{(sample name, camera): value} from a real HTTP scrape, parsed by prometheus_client's own parser."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, s.labels.get("camera", "")): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if "le" not in s.labels}


def test_every_metric_is_declared_with_its_type_and_exists_for_a_new_camera() -> None:
    """The per-camera metrics come from one table: each attribute is set, of its annotated type, and add_camera
    makes a series of every metric family exist (at 0, readout NaN) before the camera delivers a frame."""
    metrics, hints = WatchMetrics(), typing.get_type_hints(WatchMetrics)
    for attribute, kind in hints.items():
        assert isinstance(getattr(metrics, attribute), kind), attribute
    metrics.add_camera("gate")
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    declared = {getattr(metrics, attribute).describe()[0].name for attribute in [*hints, "readout"]}
    assert len(declared) == len(hints) + 1 and declared <= {fam.name for fam in families}
    for fam in families:
        assert any(s.labels.get("camera") == "gate" for s in fam.samples), fam.name
    values = {s.name: s.value for fam in families for s in fam.samples if "le" not in s.labels}
    assert values["rsdetect_frames_scanned_total"] == 0 and values["rsdetect_camera_up"] == 0
    assert math.isnan(values["rsdetect_readout_seconds"])


def test_two_cameras_metrics_match_the_frames_log(tmp_path, model) -> None:
    n = 24
    with MjpegCamera(every_third_red) as a, MjpegCamera(lambda i: solid(BLUE)) as b, \
            MetricsServer(WatchMetrics(), "127.0.0.1", 0) as server:
        assert server.port > 0
        result = run_watch(parse_sources([f"door={a.url}", f"hall={b.url}"]), model, tmp_path / "out",
                           WatchOptions(max_frames=n, **FAST), server.metrics)
        m = scrape(server.url)
    out = result.out_dir
    assert result.exit_code == 0 and result.stopped_by == "max-frames"
    assert all(tuple(r) == ROW_FIELDS for r in rows(out))  # scan's fields, in scan's order
    summary = json.loads((out / "summary.json").read_text())
    for cam, flagged in (("door", {i for i in range(n) if i % 3 == 0}), ("hall", set())):
        r = rows(out, cam)
        assert [x["frame_index"] for x in r] == list(range(n))
        assert {x["frame_index"] for x in r if x["flag"]} == flagged  # frame i of the stream, flagged exactly
        assert m[("rsdetect_frames_scanned_total", cam)] == len(r) == summary["cameras"][cam]["frames_scored"]
        assert m[("rsdetect_frames_flagged_total", cam)] == len(flagged) == summary["cameras"][cam]["flagged"]
        assert m[("rsdetect_frame_probability_count", cam)] == len(r)
        assert m[("rsdetect_frame_probability_sum", cam)] == pytest.approx(sum(x["probability"] for x in r), abs=1e-4)
        assert m[("rsdetect_reconnects_total", cam)] == m[("rsdetect_read_errors_total", cam)] == 0
        assert m[("rsdetect_frames_dropped_total", cam)] == 0
        assert m[("rsdetect_camera_up", cam)] == 0  # finished: its reader ended at max-frames
        assert m[("rsdetect_last_frame_timestamp_seconds", cam)] == pytest.approx(time.time(), abs=60)
    last_flagged = summary["cameras"]["door"]["last_flagged_time"]
    assert last_flagged > 0 and m[("rsdetect_last_flagged_timestamp_seconds", "door")] == pytest.approx(last_flagged)
    assert m[("rsdetect_last_flagged_timestamp_seconds", "hall")] == 0
    door = summary["cameras"]["door"]
    assert len(door["worst_frames"]) == 5 and all((out / w["path"]).is_file() for w in door["worst_frames"])
    assert {p.name for p in (out / "worst").iterdir()} == {Path(w["path"]).name for c in summary["cameras"].values()
                                                           for w in c["worst_frames"]}
    with open(out / "frames.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2 * n


def test_a_dropped_camera_reconnects_and_the_other_goes_on(tmp_path, model) -> None:
    """The flaky camera closes after 12 frames and answers 503 for 1 s; the watch backs off, reconnects, goes on."""
    n = 36
    with MjpegCamera(every_third_red, frames_per_connection=12, down_s=1.0) as flaky, \
            MjpegCamera(every_third_red) as steady, MetricsServer(WatchMetrics(), "127.0.0.1", 0) as server:
        seen: list[tuple[float, float]] = []  # (flaky up, steady up) per scrape, while it runs
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                m = scrape(server.url)
                # .get: a scrape may come before run_watch has added the cameras' series
                seen.append((m.get(("rsdetect_camera_up", "flaky"), 0), m.get(("rsdetect_camera_up", "steady"), 0)))
                time.sleep(0.03)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        result = run_watch(parse_sources([f"flaky={flaky.url}", f"steady={steady.url}"]), model, tmp_path / "out",
                           WatchOptions(max_frames=n, **FAST), server.metrics)
        done.set()
        poller.join(5)
        m = scrape(server.url)
        assert flaky.connections == 3 and flaky.refused >= 1
    ups = [u for u, _ in seen]
    transitions = [u for i, u in enumerate(ups) if i == 0 or u != ups[i - 1]]
    assert transitions[transitions.index(1):] == [1, 0, 1, 0, 1, 0], transitions  # up, down, up, down, up, finished
    assert 1 in [s for _, s in seen]
    cams = result.summary["cameras"]
    assert m[("rsdetect_reconnects_total", "flaky")] == cams["flaky"]["reconnects"] >= 2
    assert m[("rsdetect_read_errors_total", "flaky")] == cams["flaky"]["read_errors"] >= 1  # the 503s
    assert cams["flaky"]["connections"] == 3
    r = rows(result.out_dir, "flaky")
    assert [x["frame_index"] for x in r] == list(range(n))  # numbering goes on across reconnects
    assert {x["frame_index"] for x in r if x["flag"]} == {i for i in range(n) if i % 3 == 0}
    assert [x["timestamp_s"] for x in r] == sorted(x["timestamp_s"] for x in r)
    # The steady camera was not touched by its neighbour's trouble.
    assert (cams["steady"]["reconnects"], cams["steady"]["read_errors"], cams["steady"]["connections"]) == (0, 0, 1)
    assert [x["frame_index"] for x in rows(result.out_dir, "steady")] == list(range(n))
    assert m[("rsdetect_frames_scanned_total", "steady")] == m[("rsdetect_frames_scanned_total", "flaky")] == n


def test_a_stalled_stream_is_reconnected_after_the_stall_timeout(tmp_path, model) -> None:
    """8 frames, then an open connection that sends nothing: reconnected after --stall-timeout, not FFmpeg's 10 s."""
    # 1.5 s, not 0.5: this camera's server thread shares the test process (and its GIL) with the scorer, and a pause
    # there is a stall to the reader; at 0.5 s one CI run saw a second connection cut short (2 reconnects, not 1)
    with MjpegCamera(every_third_red, frames_per_connection=8, after="stall") as cam, \
            MetricsServer(WatchMetrics(), "127.0.0.1", 0) as server:
        start = time.monotonic()
        result = run_watch(parse_sources([f"cam={cam.url}"]), model, tmp_path / "out",
                           WatchOptions(max_frames=16, **{**FAST, "stall_timeout": 1.5}), server.metrics)
        took = time.monotonic() - start
    c = result.summary["cameras"]["cam"]
    assert (c["frames_scored"], c["reconnects"], c["connections"], c["read_errors"]) == (16, 1, 2, 0)
    assert took < 8, took


def test_files_are_watched_as_scan_scores_them(tmp_path, model) -> None:
    """A video file is read once (no reconnects) and gives scan's rows exactly: both score through score_items."""
    import cv2

    video = tmp_path / "lobby.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(20):
        writer.write(every_third_red(i))
    writer.release()
    shear = load_params(Path(__file__).parents[1] / "params.yaml").shear

    def explainer() -> Explainer:
        return Explainer(model.keras_model, model.image_size, model.kind, shear)

    watched = run_watch(parse_sources([str(video)]), model, tmp_path / "w", WatchOptions(**FAST), WatchMetrics(),
                        explain=explainer())
    scanned = run_scan(parse_sources([str(video)]), model, tmp_path / "s", ScanOptions(batch=4, progress=False),
                       explain=explainer())
    assert watched.stopped_by == "sources ended"
    assert rows(watched.out_dir) == rows(scanned.out_dir)  # shear columns of flagged frames included
    assert "shear_px" in rows(watched.out_dir)[0]
    assert watched.summary["cameras"]["lobby"]["reconnects"] == 0
    # The worst frames get scan's heatmaps and de-skewed previews in the watch folder too.
    worst = watched.summary["cameras"]["lobby"]["worst_frames"]
    assert worst and worst == scanned.summary["cameras"]["lobby"]["worst_frames"]
    for w in worst:
        assert (watched.out_dir / w["cam_path"]).is_file()
    assert watched.summary["explain"]["heatmaps"] == len(worst)


def test_rotation_keeps_k_files_of_whole_rows(tmp_path) -> None:
    def row(i: int) -> dict:
        return {"camera": "c", "frame_index": i, "timestamp_s": None, "probability": 0.5, "smoothed": 0.5,
                "flag": True, "tile": "0,0,1,1", "source": "s"}

    log = RollingLog(tmp_path, rotate_rows=5, rotate_seconds=None, keep=2)
    for start in range(0, 17, 3):
        log.write([row(i) for i in range(start, min(start + 3, 17))])
    log.close()

    def indices(name: str) -> list[int]:
        return [json.loads(line)["frame_index"] for line in (tmp_path / name).read_text().splitlines()]

    def csv_indices(name: str) -> list[int]:
        with open(tmp_path / name, newline="") as f:
            return [int(r["frame_index"]) for r in csv.DictReader(f)]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.1.csv", "frames.1.jsonl", "frames.2.csv",
                                                          "frames.2.jsonl", "frames.csv", "frames.jsonl"]
    assert (indices("frames.2.jsonl"), indices("frames.1.jsonl"), indices("frames.jsonl")) == (
        [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16])
    assert csv_indices("frames.1.csv") == [10, 11, 12, 13, 14] and csv_indices("frames.csv") == [15, 16]
    # A restart keeps the earlier session's rows as the newest rotated file, cut back to whole rows.
    with open(tmp_path / "frames.jsonl", "a") as f:
        f.write('{"camera": "c", "frame_in')  # what a power loss mid-write could leave
    RollingLog(tmp_path, rotate_rows=5, rotate_seconds=None, keep=2).close()
    assert indices("frames.1.jsonl") == [15, 16] and indices("frames.2.jsonl") == [10, 11, 12, 13, 14]
    assert (tmp_path / "frames.jsonl").read_text() == "" and csv_indices("frames.csv") == []


def test_flagged_frames_keep_each_cameras_newest_n_and_a_restart_starts_again(tmp_path) -> None:
    """--keep-flagged's folder: per camera the newest N, counted; written whole or said in one line; an earlier
    session's frames removed (its frame numbers start again), also by a watch that keeps none."""
    (tmp_path / "flagged").mkdir()
    (tmp_path / "flagged" / "door_3.bmp").write_bytes(b"an earlier session's")
    reports = WatchReports(tmp_path, rotate_rows=100, rotate_seconds=None, keep=1, keep_flagged=2)
    flagged = reports.flagged
    assert flagged is not None and not list((tmp_path / "flagged").iterdir())
    frames = {i: np.full((6, 8, 3), 10 * i, np.uint8) for i in range(4)}
    assert [flagged.save("door", "door", i, frames[i]) for i in range(3)] == [f"flagged/door_{i}.bmp" for i in range(3)]
    flagged.save("hall", "hall", 0, frames[3])
    assert sorted(p.name for p in (tmp_path / "flagged").iterdir()) == ["door_1.bmp", "door_2.bmp", "hall_0.bmp"]
    back = cv2.cvtColor(cv2.imread(str(tmp_path / "flagged" / "door_2.bmp")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, frames[2])  # lossless
    assert flagged.summary("door") == {"saved": 3, "kept": 2, "missed": 0}
    shutil.rmtree(tmp_path / "flagged")
    (tmp_path / "flagged").write_text("not a folder")  # what a full or broken disk looks like to a writer
    with pytest.raises(RsdetectError, match=r"flagged/door_9\.bmp: cannot be written") as exc:
        flagged.save("door", "door", 9, frames[0])
    assert "\n" not in str(exc.value) and flagged.summary("door")["kept"] == 2
    reports.close()
    (tmp_path / "flagged").unlink()
    (tmp_path / "flagged").mkdir()
    WatchReports(tmp_path, rotate_rows=100, rotate_seconds=None, keep=1).close()  # keeps none: the old ones go too
    assert not (tmp_path / "flagged").exists()


# ---------------------------------------------------------------- the command

def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    return err


def test_bad_flags_are_one_line_errors_before_the_model_loads(tmp_path, model_path, capsys, monkeypatch) -> None:
    def no_loading(spec):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr("rsdetect.serve.loaders.load_model", no_loading)
    base = ["watch", "cam=http://127.0.0.1:9/stream.mjpg", "--model", str(model_path)]
    out = ["--out", str(tmp_path / "out")]
    assert "--fps must be" in one_line_error(capsys, [*base, *out, "--fps", "nan"])
    assert "--stall-timeout must be" in one_line_error(capsys, [*base, *out, "--stall-timeout", "nan"])
    assert "--reconnect-max (0.5) must be >=" in one_line_error(capsys, [*base, *out, "--reconnect-initial", "2",
                                                                         "--reconnect-max", "0.5"])
    for port in ("-1", "70000"):
        err = one_line_error(capsys, [*base, *out, "--metrics-port", port])
        assert "--metrics-port must be within [0, 65535]" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        err = one_line_error(capsys, [*base, *out, "--metrics-port", str(busy.getsockname()[1])])
        assert "cannot listen" in err and str(busy.getsockname()[1]) in err
    assert "--keep-flagged must be >= 0" in one_line_error(capsys, [*base, *out, "--keep-flagged", "-1"])
    assert "needs the video evidence: not with --model-only" in one_line_error(
        capsys, [*base, *out, "--keep-flagged", "3", "--model-only"])
    assert "not with --workers/--scheduler" in one_line_error(capsys, [*base, *out, "--keep-flagged", "3",
                                                                        "--workers", "2"])
    assert "cannot write in /proc" in one_line_error(capsys, [*base, "--out", "/proc/rsdetect-nope/out"])
    (tmp_path / "mine.txt").write_text("not a report")
    assert "not rsdetect reports" in one_line_error(capsys, [*base, "--out", str(tmp_path)])
    with watch_claim(str(tmp_path / "out")):  # a watcher already writing there
        err = one_line_error(capsys, [*base, *out, "--metrics-port", "0"])
        assert "another scan or watch is writing there now" in err
    assert not [p for p in tmp_path.rglob(".*")]  # no lock or temp file left


def test_a_stop_that_ends_the_readers_is_the_reason_not_the_sources(model) -> None:
    """A signal that lands just after tick() sets `stop`; the readers see it and end, and the loop finds every
    source ended with nothing queued. The stop is still why it ended (CI once read "sources ended" for SIGTERM)."""
    stop = threading.Event()
    with MjpegCamera(every_third_red) as cam:
        loop = CameraLoop(parse_sources([f"gate={cam.url}"]), model, WatchOptions(**FAST), 0.5, WatchMetrics(), stop,
                          lambda rows: None)
        ticks: list[str] = []

        def tick() -> str | None:
            ticks.append("tick")
            if len(ticks) == 1:  # the "signal": readers stopped, their queues emptied, before the loop looks
                loop.stop_readers()
                while loop.gather():
                    pass
                return None
            return "SIGTERM" if stop.is_set() else None

        loop.start()
        try:
            assert loop.run(tick) == "SIGTERM"
        finally:
            loop.stop_readers()
    assert all(r.done.is_set() for r in loop.readers)


@pytest.mark.slow
def test_sigterm_stops_the_command_cleanly(tmp_path, model_path) -> None:
    """`rsdetect watch` as a real process: metrics port 0 announced, frames scored, SIGTERM -> exit 0, reports whole."""
    out = tmp_path / "out"
    pythonpath = os.pathsep.join([str(Path(cli.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    with MjpegCamera(every_third_red) as cam:
        proc = subprocess.Popen([sys.executable, "-m", "rsdetect.cli", "watch", f"gate={cam.url}", "--model",
                                 str(model_path), "--out", str(out), "--metrics-port", "0", "--summary-interval", "0.5",
                                 "--batch", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 180
            url = None
            while url is None or scrape(url).get(("rsdetect_frames_scanned_total", "gate"), 0) < 10:
                assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-2000:]
                url = url or next((ln.split()[-1] for ln in lines if "metrics on http" in ln), None)
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, "".join(lines)[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        stdout = proc.stdout.read()
    reader.join(5)
    assert "Traceback" not in "".join(lines) and "SIGTERM" in "".join(lines)
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] and s["exit_code"] == 0
    assert (s["watch"]["stopped_by"], s["watch"]["running"]) == ("SIGTERM", False)
    scored = s["cameras"]["gate"]["frames_scored"]
    assert scored >= 10 and len(rows(out)) == scored and f"{scored} frames" in stdout
    with open(out / "frames.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == scored
    assert s["cameras"]["gate"]["flagged"] == sum(r["flag"] for r in rows(out))
    assert all((out / w["path"]).is_file() for w in s["cameras"]["gate"]["worst_frames"])
    assert not list(tmp_path.rglob("*.tmp")) and not [p for p in tmp_path.rglob(".*")]  # no temp, staging or lock


def test_a_camera_whose_decoder_aborts_goes_down_alone(tmp_path, model, capfd) -> None:
    """Three cameras, one whose decoder dies in native code (SIGABRT): the watch goes on, the other two are scored
    whole, the dead one is down with one read error naming the signal (a stream would reconnect with backoff)."""
    import cv2
    from crashing_source import AbortingSource

    paths = {}
    for name, n in (("a", 9), ("c", 6)):
        paths[name] = tmp_path / f"{name}.avi"
        writer = cv2.VideoWriter(str(paths[name]), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
        for i in range(n):
            writer.write(every_third_red(i))
        writer.release()
    sources = parse_sources([f"a={paths['a']}", f"c={paths['c']}"])
    sources.insert(1, AbortingSource("b", str(tmp_path / "b.avi"), good=2))
    with MetricsServer(WatchMetrics(), "127.0.0.1", 0) as server:
        result = run_watch(sources, model, tmp_path / "out", WatchOptions(**FAST), server.metrics)
        m = scrape(server.url)
    assert result.exit_code == 0 and result.stopped_by == "sources ended"
    cams = result.summary["cameras"]
    assert {k: v["frames_scored"] for k, v in cams.items()} == {"a": 9, "b": 2, "c": 6}
    message = f"{tmp_path / 'b.avi'}: the decoder process was killed by SIGABRT (a crash in native decoding code); " \
              "this camera stops"
    assert cams["b"]["errors"] == [message] and cams["b"]["read_errors"] == 1 and not cams["b"]["up"]
    assert cams["a"]["read_errors"] == cams["c"]["read_errors"] == 0
    assert m[("rsdetect_read_errors_total", "b")] == 1 and m[("rsdetect_camera_up", "b")] == 0
    assert f"watch: b: {message}" in capfd.readouterr().err
