"""rsdetect watch with cameras on a local Dask cluster of 2 worker processes (rsdetect.serve.watch.shard): the same
rows,
flags and metrics as the single-process watch over video files and a real MJPEG stream; SIGTERM stops the tasks
and completes the reports; usage errors before the model loads; the CLI on an existing scheduler. One cluster for
the module; the model is the colour model as TFLite, so workers do not import TensorFlow.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("keras")
pytest.importorskip("distributed")

from test_scan import write_video  # noqa: E402
from test_watch import FAST, every_third_red, one_line_error, rows, scrape  # noqa: E402

from rsdetect import cli  # noqa: E402
from rsdetect.serve.loaders import load_model  # noqa: E402
from rsdetect.serve.shard import describe_model  # noqa: E402
from rsdetect.serve.sources import parse_sources  # noqa: E402
from rsdetect.serve.watch.loop import WatchOptions, run_watch  # noqa: E402
from rsdetect.serve.watch.metrics import MetricsServer, WatchMetrics  # noqa: E402
from rsdetect.serve.watch.shard import run_sharded_watch  # noqa: E402

from mjpeg_server import MjpegCamera  # noqa: E402

pytestmark = pytest.mark.slow  # a local Dask cluster of worker processes


def by_camera(out: Path) -> dict[str, list[dict]]:
    """frames.jsonl's rows per camera, in the order written (a camera's rows are in frame order)."""
    got: dict[str, list[dict]] = {}
    for r in rows(out):
        got.setdefault(r["camera"], []).append(r)
    return got


def test_sharded_watch_gives_the_single_process_rows_and_metrics(tmp_path, dask_client, colour_tflite) -> None:
    n = 24
    videos = [f"lobby={write_video(tmp_path / 'lobby.avi', {3, 4, 5, 12}, 20)}",
              f"dock={write_video(tmp_path / 'dock.avi', {0, 1, 2, 8}, 14)}"]
    options = WatchOptions(max_frames=n, smooth=2, **FAST)
    results, scrapes = {}, {}
    for mode in ("one", "two"):
        with MjpegCamera(every_third_red) as cam, MetricsServer(WatchMetrics(), "127.0.0.1", 0) as server:
            sources = parse_sources([*videos, f"gate={cam.url}"])
            if mode == "one":
                results[mode] = run_watch(sources, load_model(str(colour_tflite)), tmp_path / mode, options,
                                          server.metrics)
            else:
                results[mode] = run_sharded_watch(dask_client, str(colour_tflite), sources,
                                                  describe_model(dask_client, str(colour_tflite)),
                                                  tmp_path / mode, options, server.metrics)
            scrapes[mode] = scrape(server.url)
    one, two = results["one"], results["two"]
    assert one.stopped_by == two.stopped_by == "sources ended" and two.exit_code == 0
    a, b = by_camera(one.out_dir), by_camera(two.out_dir)
    assert sorted(a) == sorted(b) == ["dock", "gate", "lobby"]
    assert [len(b[c]) for c in ("lobby", "dock", "gate")] == [20, 14, n]
    for cam in a:
        assert [(r["frame_index"], r["flag"]) for r in a[cam]] == [(r["frame_index"], r["flag"]) for r in b[cam]]
        for ra, rb in zip(a[cam], b[cam], strict=True):
            assert rb["probability"] == pytest.approx(ra["probability"], abs=1e-6)
        c1, c2 = one.summary["cameras"][cam], two.summary["cameras"][cam]
        assert (c2["frames_scored"], c2["flagged"], c2["longest_flagged_run"]) == \
               (c1["frames_scored"], c1["flagged"], c1["longest_flagged_run"])
        health = (c2["reconnects"], c2["read_errors"], c2["frames_dropped"], c2["up"], c2["finished"])
        assert health == (0, 0, 0, False, True)
        # The metrics served by this process agree with the rows it wrote, frame for frame.
        m = scrapes["two"]
        assert m[("rsdetect_frames_scanned_total", cam)] == len(b[cam])
        assert m[("rsdetect_frames_flagged_total", cam)] == sum(r["flag"] for r in b[cam]) == c2["flagged"]
        assert m[("rsdetect_frame_probability_count", cam)] == len(b[cam])
        expected_sum = sum(r["probability"] for r in b[cam])
        assert m[("rsdetect_frame_probability_sum", cam)] == pytest.approx(expected_sum, abs=1e-4)
        assert m[("rsdetect_camera_up", cam)] == 0 and m[("rsdetect_frames_dropped_total", cam)] == 0
        assert m[("rsdetect_last_frame_timestamp_seconds", cam)] == pytest.approx(time.time(), abs=60)
        # times and float sums aside, every series equals the single process's
        def series(scraped: dict, cam=cam) -> dict:
            return {k: v for k, v in scraped.items()
                    if k[1] == cam and not k[0].endswith(("_seconds", "_sum", "_created"))}
        assert series(m) == series(scrapes["one"]) and len(series(m)) == 11  # 7 + static, saved, shear counts (2)
        # The worst frames are the same frames, written here (heatmaps skipped: the model is on the workers).
        assert [(w["frame_index"], w["path"]) for w in c2["worst_frames"]] == \
               [(w["frame_index"], w["path"]) for w in c1["worst_frames"]]
        assert all((two.out_dir / w["path"]).is_file() for w in c2["worst_frames"])
    assert {p.name for p in (two.out_dir / "worst").iterdir()} == {
        Path(w["path"]).name for c in two.summary["cameras"].values() for w in c["worst_frames"]}
    assert json.loads((two.out_dir / "summary.json").read_text())["totals"] == two.summary["totals"]


def test_sigterm_stops_the_tasks_and_completes_the_reports(tmp_path, dask_client, colour_tflite) -> None:
    """SIGTERM to this process mid-run: the stop flag reaches the workers' tasks, what they read is scored and
    sent, the reports are whole, and both workers are free again within seconds."""
    video = write_video(tmp_path / "lobby.avi", {1, 2}, 8)
    with MjpegCamera(every_third_red) as cam, MetricsServer(WatchMetrics(), "127.0.0.1", 0) as server:
        def terminate_when_the_stream_is_scored() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if scrape(server.url).get(("rsdetect_frames_scanned_total", "gate"), 0) >= 10:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=terminate_when_the_stream_is_scored, daemon=True)
        killer.start()
        result = run_sharded_watch(dask_client, str(colour_tflite), parse_sources([str(video), f"gate={cam.url}"]),
                                   describe_model(dask_client, str(colour_tflite)), tmp_path / "out",
                                   WatchOptions(**FAST), server.metrics)
        stopped_at = time.monotonic()
        killer.join(5)
        m = scrape(server.url)
    assert (result.stopped_by, result.exit_code) == ("SIGTERM", 0)
    s = json.loads((result.out_dir / "summary.json").read_text())
    assert s["interrupted"] and (s["watch"]["stopped_by"], s["watch"]["running"]) == ("SIGTERM", False)
    got = by_camera(result.out_dir)
    for cam in ("lobby", "gate"):
        assert s["cameras"][cam]["frames_scored"] == len(got[cam]) == m[("rsdetect_frames_scanned_total", cam)]
        assert [r["frame_index"] for r in got[cam]] == list(range(len(got[cam])))
        assert s["cameras"][cam]["finished"] and not s["cameras"][cam]["up"]
        assert all((result.out_dir / w["path"]).is_file() for w in s["cameras"][cam]["worst_frames"])
    assert len(got["lobby"]) == 8 and len(got["gate"]) >= 10
    assert not list(tmp_path.rglob("*.tmp")) and not [p for p in tmp_path.rglob(".*")]  # no temp, staging or lock
    free = [dask_client.submit(time.monotonic, workers=[w], allow_other_workers=False, pure=False)
            for w in dask_client.scheduler_info()["workers"]]
    assert max(f.result(timeout=10) for f in free) - stopped_at < 10


def test_cli_usage_errors_and_an_existing_scheduler(tmp_path, dask_client, colour_tflite, capsys, monkeypatch) -> None:
    video = write_video(tmp_path / "v.avi", {1, 2}, 6)
    cli.main(["watch", "--model-only", str(video), "--model", str(colour_tflite), "--out", str(tmp_path / "out"),
              "--metrics-port", "0", "--scheduler", dask_client.scheduler.address])
    assert "6 frames from 1 cameras, 2 flagged" in capsys.readouterr().out
    assert [r["frame_index"] for r in rows(tmp_path / "out") if r["flag"]] == [1, 2]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "the model is on the workers" in summary["explain"]["heatmaps_skipped_reason"]

    def no_loading(*args, **kwargs):
        raise AssertionError("the model or the cluster was started before the flags were checked")

    monkeypatch.setattr("rsdetect.serve.loaders.load_model", no_loading)
    monkeypatch.setattr("rsdetect.serve.shard.open_client", no_loading)
    base = ["watch", "--model-only", str(video), "--model", str(colour_tflite), "--out", str(tmp_path / "x"),
            "--metrics-port", "0"]
    assert "--workers must be >= 1" in one_line_error(capsys, [*base, "--workers", "0"])
    assert "not both" in one_line_error(capsys, [*base, "--workers", "2", "--scheduler", dask_client.scheduler.address])
    assert not (tmp_path / "x").exists()


def test_a_worker_that_dies_is_replaced_and_the_other_cameras_go_on(tmp_path, dask_client, colour_tflite,
                                                                   capsys) -> None:
    """The worker watching one stream exits outright; Dask reruns its task on the restarted worker: the camera is
    watched again (one read error, said once; frame numbers go on), the other camera is not touched. Last in the
    module: it kills a worker of the shared cluster."""
    with MjpegCamera(every_third_red) as gate, MjpegCamera(every_third_red) as door, \
            MetricsServer(WatchMetrics(), "127.0.0.1", 0) as server:
        def kill_the_gate_worker_then_stop() -> None:
            deadline = time.monotonic() + 60
            while scrape(server.url).get(("rsdetect_frames_scanned_total", "gate"), 0) < 10:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            where = [w for w, keys in dask_client.processing().items() if any(k.startswith("watch-0-") for k in keys)]
            with contextlib.suppress(Exception):  # the worker dies under the call
                dask_client.run(os._exit, 1, workers=where)
            before = scrape(server.url)[("rsdetect_frames_scanned_total", "gate")]
            while scrape(server.url)[("rsdetect_frames_scanned_total", "gate")] < before + 10:  # watched again
                assert time.monotonic() < deadline + 60
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGTERM)

        killer = threading.Thread(target=kill_the_gate_worker_then_stop, daemon=True)
        killer.start()
        result = run_sharded_watch(dask_client, str(colour_tflite),
                                   parse_sources([f"gate={gate.url}", f"door={door.url}"]),
                                   describe_model(dask_client, str(colour_tflite)), tmp_path / "out",
                                   WatchOptions(**FAST), server.metrics)
        killer.join(5)
        m = scrape(server.url)
    assert result.stopped_by == "SIGTERM" and gate.connections == 2 and door.connections == 1
    c = result.summary["cameras"]
    assert (c["gate"]["read_errors"], c["door"]["read_errors"], c["door"]["reconnects"]) == (1, 0, 0)
    assert c["gate"]["errors"] == ["its Dask worker died; watched again on another worker"]
    assert capsys.readouterr().err.count("its Dask worker died") == 1
    got = by_camera(result.out_dir)
    for cam in ("gate", "door"):
        assert [r["frame_index"] for r in got[cam]] == list(range(len(got[cam])))  # numbering goes on
        assert m[("rsdetect_frames_scanned_total", cam)] == len(got[cam]) == c[cam]["frames_scored"]
    assert m[("rsdetect_read_errors_total", "gate")] == 1
