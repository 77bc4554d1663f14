"""scan and watch on video with known truth: each camera's decoder process measures motion and rolling-shutter
evidence (rsdetect.video), and the rows, flags, summary and metrics carry it in native px and ms."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from rsdetect.serve.loaders import load_model  # noqa: E402
from rsdetect.serve.scan import ScanOptions, run_scan  # noqa: E402
from rsdetect.serve.sources import Sensor, parse_sources  # noqa: E402
from rsdetect.synth.clips import crop_box, degrade, render_camera, still, vibration  # noqa: E402
from rsdetect.video.evidence import unroll  # noqa: E402

from conftest import colour_model, mains_clip, params_group, texture  # noqa: E402

FPS = 25.0
FRAMES = 40
SHAKE = vibration(3.0, 7.0, FPS, 0.3, 0.2)  # 3 px at 7 Hz: a shaking mount


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "colour.keras"
    colour_model(32).save(path)
    return load_model(str(path))


@pytest.fixture(scope="module")
def analysis():
    return params_group("video.analysis")


def scene() -> np.ndarray:
    """A textured 640x480 scene (flow needs texture)."""
    return texture(np.random.default_rng(5))


def write_clip(path: Path, trajectory, readout_ms: float, shutter: str) -> list[dict]:
    """An MJPG .avi of the scene filmed through `trajectory`; the per-frame truth."""
    image = scene()
    frames, truth = render_camera(image, trajectory, FRAMES, readout_ms * FPS / 1000, shutter, crop_box(image, 0.7))
    rng = np.random.default_rng(1)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, h))
    for f in frames:
        writer.write(degrade(f, rng, 2.0, 95))
    writer.release()
    return truth


def rows(out: Path, camera: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "frames.jsonl").read_text().splitlines()) if r["camera"] == camera]


def test_scan_measures_shear_in_native_px_where_the_readout_is_told(tmp_path, model, analysis):
    truth = write_clip(tmp_path / "shake.avi", SHAKE, 24.0, "rolling")
    write_clip(tmp_path / "twin.avi", SHAKE, 24.0, "global")
    write_clip(tmp_path / "still.avi", still, 24.0, "rolling")
    (tmp_path / "cameras.yaml").write_text("cameras:\n  shake: {source: shake.avi, readout_ms: 24}\n"
                                           "  twin: {source: twin.avi, shutter: global}\n  still: still.avi\n")
    result = run_scan(parse_sources([], str(tmp_path / "cameras.yaml")), model, tmp_path / "out",
                      ScanOptions(progress=False, analysis=analysis))
    assert result.exit_code == 0 and result.summary["video_evidence"] is True
    shake = rows(tmp_path / "out", "shake")
    assert [r["frame_index"] for r in shake] == list(range(FRAMES))  # every frame, in order, after the lag
    distorted = [(r, t) for r, t in zip(shake, truth, strict=True) if t["rs_shear_px"] >= 1.0]
    assert distorted
    errors = [abs(r["rs_shear_px"] - t["rs_shear_px"]) for r, t in distorted]
    assert np.median(errors) <= 1.0  # native px
    assert np.mean([r["flag"] for r, t in distorted if t["rs_shear_px"] >= 2.0]) >= 0.8
    # (no-shear: a slow frame of the shake, measured because the camera just moved, sheared under the flag)
    assert all(r["evidence"] in ("camera-shear", "mover-shear", "no-shear", "static") and r["tile"] is None
               for r in shake)
    # a flagged frame is handed to correction with how to undo what was measured (the camera's per-row motion)
    assert all((r["unroll"] is not None) == r["flag"] for r in shake)
    assert all(r["unroll"]["camera"] is not None for r in shake if r["flag"])
    cams = result.summary["cameras"]
    assert cams["shake"]["readout"] == {"ms": 24.0, "ci_ms": [24.0, 24.0], "source": "configured",
                                        "evidence_frames": 0, "method": None, "why": None}
    assert cams["twin"]["readout"]["ms"] == 0.0 and cams["twin"]["flagged"] == 0
    assert cams["still"]["flagged"] == 0 and cams["still"]["static_frames"] == FRAMES
    assert "too few frames of camera motion" in cams["still"]["readout"]["why"]  # what a user can act on
    assert cams["still"]["readout"]["source"] == "unknown"  # nothing moved: no evidence, never an invented value
    # the shear per ms of readout of the frames that moved, to its 5% bin; none where nothing moved
    moved = [r["shear_px_per_ms"] for r in shake if r["evidence"] != "static"]
    assert cams["shake"]["shear_px_per_ms_p95"] == pytest.approx(np.percentile(moved, 95), rel=0.05)
    assert cams["still"]["shear_px_per_ms_p95"] is None
    assert all(r["evidence"] == "static" and r["probability"] == 0.0 for r in rows(tmp_path / "out", "still"))


def test_scan_estimates_a_shaking_cameras_readout_when_not_told(tmp_path, model, analysis):
    write_clip(tmp_path / "shake.avi", SHAKE, 24.0, "rolling")
    result = run_scan(parse_sources([str(tmp_path / "shake.avi")]), model, tmp_path / "out",
                      ScanOptions(progress=False, analysis=analysis))
    readout = result.summary["cameras"]["shake"]["readout"]
    assert readout["source"] == "estimated" and abs(readout["ms"] - 24.0) <= 0.25 * 24.0
    assert readout["ci_ms"][0] <= readout["ms"] <= readout["ci_ms"][1] and readout["evidence_frames"] > 0


def test_scan_reads_a_fixed_cameras_readout_off_its_flickering_lights(tmp_path, model, analysis):
    # Only a walker moves, so the camera's motion gives no readout; lamps on 60 Hz mains, read row by row in 24 ms
    # at 25 fps, do (rsdetect.video.flicker), in the camera's decoder process as in analyze()
    writer = cv2.VideoWriter(str(tmp_path / "lobby.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    for frame in mains_clip(24.0, "rolling"):
        writer.write(frame)
    writer.release()
    result = run_scan(parse_sources([str(tmp_path / "lobby.avi")]), model, tmp_path / "out",
                      ScanOptions(progress=False, analysis=analysis))
    readout = result.summary["cameras"]["lobby"]["readout"]
    assert readout["source"] == "estimated" and readout["method"] == "flicker", readout
    assert abs(readout["ms"] - 24.0) <= 0.05 * 24.0
    walked = [r for r in rows(tmp_path / "out", "lobby") if r["motion_px"] >= 3.0]  # the walker: 6 px/frame
    assert len(walked) >= 30 and all(r["evidence"] == "mover-shear" for r in walked)
    assert 0.6 <= float(np.median([r["rs_shear_px"] for r in walked])) <= 1.3  # 0.9 px true


def test_stills_keep_the_model_and_command_line_sensors_reach_the_rows(tmp_path, model, analysis):
    folder = tmp_path / "stills"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), scene()[:64, :64])
    truth = write_clip(tmp_path / "shake.avi", SHAKE, 24.0, "rolling")
    sources = parse_sources([str(folder), str(tmp_path / "shake.avi")], None, Sensor(readout_ms=24.0))
    result = run_scan(sources, model, tmp_path / "out", ScanOptions(progress=False, analysis=analysis))
    still_row, = rows(tmp_path / "out", "stills")
    assert still_row["evidence"] == "cnn" and still_row["rs_shear_px"] is None and still_row["tile"] is not None
    assert result.summary["cameras"]["stills"]["readout"] is None
    assert result.summary["cameras"]["shake"]["readout"]["source"] == "configured"
    assert max(r["rs_shear_px"] for r in rows(tmp_path / "out", "shake")) == pytest.approx(
        max(t["rs_shear_px"] for t in truth), abs=1.0)


def test_watch_rows_summary_and_a_scrape_carry_the_evidence(tmp_path, model, analysis):
    """The same clips watched: scan's rows, the readout in summary.json and in rsdetect_readout_seconds, the shear
    histogram and the static counter in a real HTTP scrape."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from rsdetect.serve.watch.loop import WatchOptions, run_watch
    from rsdetect.serve.watch.metrics import MetricsServer, WatchMetrics

    write_clip(tmp_path / "shake.avi", SHAKE, 24.0, "rolling")
    write_clip(tmp_path / "still.avi", still, 24.0, "rolling")
    (tmp_path / "cameras.yaml").write_text("cameras:\n  shake: {source: shake.avi, readout_ms: 24}\n"
                                           "  still: still.avi\n")
    sources = parse_sources([], str(tmp_path / "cameras.yaml"))
    with MetricsServer(WatchMetrics(), "127.0.0.1", 0) as server:
        result = run_watch(sources, model, tmp_path / "w", WatchOptions(batch=4, queue_frames=256,
                                                                        summary_interval=0.3, analysis=analysis),
                           server.metrics)
        text = urllib.request.urlopen(server.url, timeout=5).read().decode()
    run_scan(sources, model, tmp_path / "s", ScanOptions(batch=4, progress=False, analysis=analysis))
    for cam in ("shake", "still"):
        assert rows(tmp_path / "w", cam) == rows(tmp_path / "s", cam)  # the same scoring core, the same rows
    watched = rows(tmp_path / "w", "shake")  # flagged ones with how to undo them (unroll), as scan's
    assert any(r["flag"] for r in watched) and all((r["unroll"] is not None) == r["flag"] for r in watched)
    cams = result.summary["cameras"]
    assert cams["shake"]["readout"]["source"] == "configured" and cams["still"]["static_frames"] == FRAMES
    assert cams["shake"]["shear_px_per_ms_p95"] > 0 and cams["still"]["shear_px_per_ms_p95"] is None
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("rsdetect_readout_seconds", (("camera", "shake"), ("source", "configured")))] == 0.024
    assert ("rsdetect_readout_seconds", (("camera", "still"), ("source", "unknown"))) in samples
    assert samples[("rsdetect_frames_static_total", (("camera", "still"),))] == FRAMES
    shear = [r["rs_shear_px"] for r in rows(tmp_path / "w", "shake")]
    assert samples[("rsdetect_rs_shear_px_count", (("camera", "shake"),))] == len(shear)
    assert samples[("rsdetect_rs_shear_px_sum", (("camera", "shake"),))] == pytest.approx(sum(shear), abs=1e-3)
    assert samples[("rsdetect_rs_shear_px_bucket", (("camera", "shake"), ("le", "2.0")))] == \
        sum(s <= 2.0 for s in shear)
    # shear per ms of readout, readout or not, on frames with motion: the still camera has none
    per_ms = [r["shear_px_per_ms"] for r in rows(tmp_path / "w", "shake") if r["evidence"] != "static"]
    assert per_ms and samples[("rsdetect_shear_px_per_ms_count", (("camera", "shake"),))] == len(per_ms)
    assert samples[("rsdetect_shear_px_per_ms_sum", (("camera", "shake"),))] == pytest.approx(sum(per_ms), abs=1e-3)
    assert samples[("rsdetect_shear_px_per_ms_count", (("camera", "still"),))] == 0


def test_the_command_line_measures_video_by_default_and_model_only_opts_out(tmp_path, model, monkeypatch,
                                                                            capsys):
    """`rsdetect scan` in the project folder reads video.analysis from params.yaml: video rows carry the evidence;
    --model-only scores them with the model, as stills."""
    from rsdetect import cli

    from conftest import ROOT

    write_clip(tmp_path / "shake.avi", SHAKE, 24.0, "rolling")
    path = tmp_path / "colour.keras"
    colour_model(32).save(path)
    monkeypatch.chdir(ROOT)
    for flags, evidence in (([], {"camera-shear", "no-shear", "static"}), (["--model-only"], {"cnn"})):
        out = tmp_path / f"out{len(flags)}"
        cli.main(["scan", str(tmp_path / "shake.avi"), "--model", str(path), "--out", str(out), "--readout-ms", "24",
                  *flags])
        if not flags:  # the cameras that distort most, named at the end: the shake told 24 ms, flagged
            rate = json.loads((out / "summary.json").read_text())["cameras"]["shake"]["flagged_rate"]
            assert capsys.readouterr().out.splitlines()[-1] == \
                f"scan: most flagged: shake {rate:.1%} (readout 24 ms, configured)"
        got = rows(out, "shake")
        assert len(got) == FRAMES and {r["evidence"] for r in got} <= evidence and got[-1]["evidence"] in evidence
        summary = json.loads((out / "summary.json").read_text())
        assert summary["video_evidence"] is (not flags)


FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "footage"


@pytest.mark.skipif(not FOOTAGE.is_dir(), reason="the real footage in ../shared is absent")
def test_real_footage_a_container_that_claims_twice_its_frame_rate_is_read_whole():
    """concourse_walkers' AVI header says 50 frames/s and 682 frames; its frames are 40 ms apart and 341 decode, to
    the end of its 13.6 s: read whole at 25 frames/s (noted), not a camera that 'ended early'."""
    from rsdetect.serve.sources import video_frames

    notes: list[str] = []
    frames = list(video_frames(str(FOOTAGE / "concourse_walkers_1280x720.avi"), on_note=notes.append))
    assert len(frames) == 341 and frames[1][1] == pytest.approx(0.04) and frames[-1][1] == pytest.approx(13.6)
    assert len(notes) == 1 and "says 50 frames/s and 682 frames, its time stamps 25 frames/s" in notes[0]


@pytest.mark.skipif(not FOOTAGE.is_dir(), reason="the real footage in ../shared is absent")
def test_real_fixed_cameras_no_frame_without_motion_is_flagged(tmp_path, model, analysis):
    """Two real fixed cameras (people walking; cars passing): every frame gets a row, none where nothing moves is
    flagged, and with no camera motion no readout is invented."""
    sources = parse_sources([str(FOOTAGE / "road_320x240.avi"), str(FOOTAGE / "concourse_walkers_1280x720.avi")])
    result = run_scan(sources, model, tmp_path / "out", ScanOptions(progress=False, analysis=analysis, max_frames=200))
    assert result.exit_code == 0
    for cam, summary in result.summary["cameras"].items():
        got = rows(tmp_path / "out", cam)
        assert len(got) == summary["frames_scored"] == 200 and summary["failures"] == 0
        assert not [r for r in got if r["flag"] and not r["motion_px"]], cam
        # every video row says what a readout would do to it, measured without one (0 where nothing moves)
        assert all(r["shear_px_per_ms"] >= 0 and (r["motion_px"] or not r["shear_px_per_ms"]) for r in got), cam
        assert summary["readout"]["source"] in ("unknown", "estimated")
        if summary["readout"]["source"] == "unknown":
            assert summary["readout"]["ms"] is None


def test_check_footage_reports_each_video_and_a_bad_one_in_one_line(tmp_path, capsys, monkeypatch):
    """check-footage: the evidence alone (no model) per video, written to --out; an unreadable file is its own
    failure (one line, exit 3), the other video is still reported."""
    from rsdetect import cli

    from conftest import ROOT

    truth = write_clip(tmp_path / "shake.avi", SHAKE, 24.0, "rolling")
    (tmp_path / "broken.avi").write_bytes(b"RIFF\x00\x00 not a video")
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check-footage", str(tmp_path / "shake.avi"), str(tmp_path / "broken.avi"), "--readout-ms", "24",
                  "--out", str(tmp_path / "footage.json")])
    assert exit_info.value.code == 3
    report = json.loads((tmp_path / "footage.json").read_text())
    shake, broken = report["videos"]["shake"], report["videos"]["broken"]
    assert shake["frames"] == FRAMES and shake["fps"] == pytest.approx(FPS) and shake["flagged_without_motion"] == 0
    assert shake["readout"]["source"] == "configured" and shake["flag_rate"] > 0
    assert shake["rs_shear_px_p95"] == pytest.approx(np.percentile([t["rs_shear_px"] for t in truth], 95), abs=1.0)
    # per ms of readout, told or not: a shake's shear at 24 ms, to first order (its speed, not its curve)
    assert shake["shear_px_per_ms_p95"] * 24 == pytest.approx(shake["rs_shear_px_p95"], rel=0.2)
    assert broken["shear_px_per_ms_p95"] is None
    assert broken["frames"] == 0 and len(broken["errors"]) == 1 and report["totals"] == {"videos": 2, "failed": 1}
    err = capsys.readouterr().err
    assert f"check-footage: broken: {tmp_path / 'broken.avi'}: cannot open" in err and "Traceback" not in err

    # not told, the shake's readout is estimated, and printed with its interval (what a user configures it from)
    cli.main(["check-footage", str(tmp_path / "shake.avi"), "--out", str(tmp_path / "estimated.json")])
    readout = json.loads((tmp_path / "estimated.json").read_text())["videos"]["shake"]["readout"]
    assert readout["source"] == "estimated" and abs(readout["ms"] - 24.0) <= 0.25 * 24.0
    lo, hi = readout["ci_ms"]
    assert f"readout {readout['ms']:.1f} ms (estimated from camera-motion, 95% {lo:.1f}-{hi:.1f} ms, " in \
        capsys.readouterr().out


def test_worst_video_frames_get_the_measured_de_skew(tmp_path, model, analysis):
    """A shaking camera's worst frames are handed to correction with the camera's measured per-row motion undone
    (`deskew`: measured): each preview is closer to the global-shutter twin's frame than the frame itself."""
    from rsdetect.serve.explain import Explainer

    image = scene()
    box = crop_box(image, 0.7)
    rs, _ = render_camera(image, SHAKE, FRAMES, 24.0 * FPS / 1000, "rolling", box)
    gs, _ = render_camera(image, SHAKE, FRAMES, 24.0 * FPS / 1000, "global", box)
    write_clip(tmp_path / "shake.avi", SHAKE, 24.0, "rolling")
    explain = Explainer(model.keras_model, model.image_size, model.kind, params_group("shear"))
    result = run_scan(parse_sources([str(tmp_path / "shake.avi")], None, Sensor(readout_ms=24.0)), model,
                      tmp_path / "out", ScanOptions(progress=False, analysis=analysis), explain=explain)
    worst = result.summary["cameras"]["shake"]["worst_frames"]
    assert len(worst) == 5 and all(w["deskew"] == "measured" for w in worst)
    # handed over with what was measured, and nothing of the single-frame model that did not score them (its edge
    # estimate of the shear, blind to movers, read -5.3 px on a real road frame whose cars were sheared 1-3 px)
    rows = {r["frame_index"]: r for r in map(json.loads, (tmp_path / "out" / "frames.jsonl").read_text().splitlines())}
    for w in worst:
        assert w["rs_shear_px"] == rows[w["frame_index"]]["rs_shear_px"] >= 1.0
        assert w["evidence"] == rows[w["frame_index"]]["evidence"] == "camera-shear"
        assert w["shear_px"] is None and w["cam_path"] is None and w["tile"] is None
    for w in worst:  # the frame as saved and its preview: both decoded, noisy and JPEG'd alike
        frame, preview = (cv2.imread(str(tmp_path / "out" / w[key])).astype(float) for key in ("path", "deskew_path"))
        twin = gs[w["frame_index"]].astype(float)
        inner = (slice(20, -20), slice(20, -20))  # the rows' shift brings in border pixels
        before, after = (np.abs(x - twin)[inner].mean() for x in (frame, preview))
        assert after < before, (w["frame_index"], before, after)
        # a correction step, given the frame and its row's `unroll` (frames.jsonl), undoes it as the preview did
        redone = np.abs(unroll(frame, rows[w["frame_index"]]["unroll"]) - twin)[inner].mean()
        assert redone < before and abs(redone - after) < 0.25 * (before - after), (before, after, redone)
