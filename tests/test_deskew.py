"""`rsdetect deskew`: a scan's flagged video frames written with their measured displacement undone (the hand-off to a
correction step), and its one-line answers to what it cannot do."""
from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from rsdetect import cli  # noqa: E402
from rsdetect.synth.clips import crop_box, render_camera, vibration  # noqa: E402

from conftest import colour_model, params_group, texture  # noqa: E402

FPS = 25.0
FRAMES = 30
SHAKE = vibration(3.0, 7.0, FPS, 0.3, 0.2)  # 3 px at 7 Hz: a shaking mount
READOUT_MS = 24.0


def clip(shutter: str) -> list[np.ndarray]:
    image = texture(np.random.default_rng(5))
    frames, _ = render_camera(image, SHAKE, FRAMES, READOUT_MS * FPS / 1000, shutter, crop_box(image, 0.7))
    return frames


def write(path: Path, frames: list[np.ndarray]) -> Path:
    """Lossless (FFV1) so that a frame decoded again is the frame the scan measured."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), FPS, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A scan of a shaking rolling-shutter camera told its readout: its report folder and the global-shutter twin."""
    tmp = tmp_path_factory.mktemp("deskew")
    model = tmp / "colour.keras"
    colour_model(32).save(model)
    video = write(tmp / "shake.avi", clip("rolling"))
    cli.main(["scan", f"shake={video}", "--readout-ms", str(READOUT_MS), "--model", str(model),
              "--out", str(tmp / "scan")])
    return tmp / "scan", clip("global")


def rows(report: Path) -> list[dict]:
    return [json.loads(line) for line in (report / "frames.jsonl").read_text().splitlines()]


def test_each_flagged_frame_is_written_undone_closer_to_its_global_shutter_twin(scanned, tmp_path, capsys):
    report, twin = scanned
    capsys.readouterr()
    flagged = [r for r in rows(report) if r["flag"]]
    assert len(flagged) >= 5 and all(r["unroll"] is not None for r in flagged)
    cli.main(["deskew", str(report), "--out", str(tmp_path / "fixed"), "--originals"])
    out = capsys.readouterr().out
    assert f"deskew: {len(flagged)} flagged frames of 1 cameras written" in out and "skipped" not in out
    names = sorted(p.name for p in (tmp_path / "fixed").iterdir())
    assert names == sorted([f"shake_{r['frame_index']}.png" for r in flagged]
                           + [f"shake_{r['frame_index']}_original.png" for r in flagged])
    inner = (slice(20, -20), slice(20, -20))  # the rows' shift brings in border pixels
    gains = []
    for r in flagged:
        i = r["frame_index"]
        fixed, original = (cv2.cvtColor(cv2.imread(str(tmp_path / "fixed" / f"shake_{i}{s}.png")), cv2.COLOR_BGR2RGB)
                           .astype(float) for s in ("", "_original"))
        before, after = (np.abs(x - twin[i])[inner].mean() for x in (original, fixed))
        gains.append(before / after)
    assert min(gains) > 1.5 and np.median(gains) > 2.5, gains  # measured: 2.5-5.7, median 4.3


def test_what_cannot_be_undone_is_counted_and_said_in_one_line(scanned, tmp_path, capsys):
    report, _ = scanned
    moved = tmp_path / "report"
    shutil.copytree(report, moved)
    lines = (moved / "frames.jsonl").read_text().splitlines()
    flagged = sum(json.loads(line)["unroll"] is not None for line in lines)
    # the video no longer where the rows say, and a stream's flagged frame: skipped, counted, exit 3
    rewritten = [json.loads(line) for line in lines]
    for r in rewritten:
        r["source"] = str(tmp_path / "gone.avi")
    stream = {**next(r for r in rewritten if r["unroll"] is not None), "camera": "gate",
              "source": "rtsp://127.0.0.1:8554/gate"}
    (moved / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rewritten, stream]))
    with pytest.raises(SystemExit) as exc:
        cli.main(["deskew", str(moved), "--out", str(tmp_path / "fixed")])
    assert exc.value.code == 3
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"deskew: shake: {tmp_path / 'gone.avi'}: no video file there; {flagged} flagged frames skipped",
        "deskew: gate: rtsp://127.0.0.1:8554/gate: a stream's frames cannot be read again; 1 flagged frames skipped"]
    assert "0 flagged frames of 2 cameras written" in captured.out and f"{flagged + 1} skipped" in captured.out
    # a row's unroll that scan did not write (edited by hand): that frame skipped and said, the others written
    rows_back = [json.loads(line) for line in lines]
    broken = next(r for r in rows_back if r["unroll"] is not None)
    broken["unroll"] = {"camera": None, "movers": []}
    (moved / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_back))
    with pytest.raises(SystemExit) as exc:
        cli.main(["deskew", str(moved), "--out", str(tmp_path / "fixed")])
    captured = capsys.readouterr()
    assert exc.value.code == 3 and captured.err.splitlines() == [
        f"deskew: shake: frame {broken['frame_index']}: its unroll is not one scan writes (KeyError: 'rows')"]
    assert f"{flagged - 1} flagged frames of 1 cameras written" in captured.out
    assert len(list((tmp_path / "fixed").iterdir())) == flagged - 1
    # not a report, or a broken one: one line, exit 2, nothing written
    (moved / "frames.jsonl").write_text('{"camera": "a"}\nnot json\n')
    for folder, message in ((tmp_path / "nothing", "frames.jsonl: missing; give the --out folder of a scan or watch"),
                            (moved, "frames.jsonl: line 2 is not a frame row")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["deskew", str(folder), "--out", str(tmp_path / "broken")])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    (moved / "frames.jsonl").write_text('{"camera": "a", "frame_index": 3, "unroll": {}}\n')  # no source
    with pytest.raises(SystemExit) as exc:
        cli.main(["deskew", str(moved), "--out", str(tmp_path / "broken")])
    assert exc.value.code == 2 and "line 1 is not a frame row" in capsys.readouterr().err
    assert not (tmp_path / "broken").exists()


def test_a_live_cameras_flagged_frames_saved_by_watch_are_undone_from_the_saved_files(tmp_path, capsys):
    """A stream cannot be decoded again: `watch --keep-flagged N` saves each camera's newest N flagged frames as
    decoded (named in their rows), and deskew applies the rows' unroll to them. A real MJPEG camera on 127.0.0.1
    sends the shaking rolling-shutter clip (24 ms, told), looped."""
    from prometheus_client.parser import text_string_to_metric_families

    from rsdetect.serve.loaders import load_model
    from rsdetect.serve.sources import parse_sources
    from rsdetect.serve.watch.loop import WatchOptions, run_watch
    from rsdetect.serve.watch.metrics import MetricsServer, WatchMetrics

    from mjpeg_server import MjpegCamera

    rolling, twin = clip("rolling"), clip("global")
    model = tmp_path / "colour.keras"
    colour_model(32).save(model)
    analysis = params_group("video.analysis")
    with MjpegCamera(lambda i: cv2.cvtColor(rolling[i % FRAMES], cv2.COLOR_RGB2BGR), fps=FPS) as cam, \
            MetricsServer(WatchMetrics(), "127.0.0.1", 0) as server:
        (tmp_path / "cameras.yaml").write_text(f"cameras:\n  shake: {{source: '{cam.url}', "
                                               f"readout_ms: {READOUT_MS}}}\n")
        result = run_watch(parse_sources([], str(tmp_path / "cameras.yaml")), load_model(str(model)), tmp_path / "w",
                           WatchOptions(batch=4, queue_frames=256, summary_interval=0.3, max_frames=2 * FRAMES,
                                        analysis=analysis, keep_flagged=4), server.metrics)
        scraped = {s.name: s.value for fam in text_string_to_metric_families(
            urllib.request.urlopen(server.url, timeout=5).read().decode()) for s in fam.samples}
    watched = rows(tmp_path / "w")
    flagged = [r for r in watched if r["flag"]]
    assert len(flagged) >= 10 and all(r["frame_file"] is None for r in watched if not r["flag"])
    assert [r["frame_file"] for r in flagged] == [f"flagged/shake_{r['frame_index']}.bmp" for r in flagged]
    # the newest 4 kept, the older ones removed; counted in summary.json and in a real scrape
    kept = sorted(p.name for p in (tmp_path / "w" / "flagged").iterdir())
    assert kept == sorted(r["frame_file"].split("/")[1] for r in flagged[-4:])
    assert result.summary["cameras"]["shake"]["flagged_frames"] == {"saved": len(flagged), "kept": 4, "missed": 0}
    assert scraped["rsdetect_flagged_frames_saved_total"] == len(flagged)
    # deskew undoes the kept ones from the saved files; the ones the ring moved past: skipped, counted, said
    with pytest.raises(SystemExit) as exc:
        cli.main(["deskew", str(tmp_path / "w"), "--out", str(tmp_path / "fixed")])
    captured = capsys.readouterr()
    assert exc.value.code == 3 and f"{len(flagged) - 4} saved flagged frames no longer in" in captured.err
    assert "4 flagged frames of 1 cameras written" in captured.out
    inner = (slice(20, -20), slice(20, -20))
    for r in flagged[-4:]:
        saved, fixed = (cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(float) for path in
                        (tmp_path / "w" / r["frame_file"], tmp_path / "fixed" / f"shake_{r['frame_index']}.png"))
        k = int(np.argmin([np.abs(saved - f).mean() for f in rolling]))  # the clip's frame it is (JPEG-sent)
        assert np.abs(saved - rolling[k]).mean() < 1.0  # the frame as decoded (JPEG's loss: measured 0.24-0.25)
        before, after = (np.abs(x - twin[k])[inner].mean() for x in (saved, fixed))
        assert before / after > 1.5, (r["frame_index"], before, after)  # measured 1.8-3.6


def test_watch_saves_every_frame_it_flags_also_when_smoothing(tmp_path, capsys):
    """With --smooth K the decoder replays the scorer's smoothing to send the flagged frames' pixels: on a file
    (no reconnects, no drops) every flagged frame is saved, exactly as decoded (FFV1: lossless). The command line
    says how many."""
    from rsdetect.serve.sources import video_frames

    video = write(tmp_path / "shake.avi", clip("rolling"))
    model = tmp_path / "colour.keras"
    colour_model(32).save(model)
    (tmp_path / "cameras.yaml").write_text(f"cameras:\n  shake: {{source: '{video}', readout_ms: {READOUT_MS}}}\n")
    cli.main(["watch", "--cameras", str(tmp_path / "cameras.yaml"), "--model", str(model), "--out", str(tmp_path / "w"),
              "--smooth", "3", "--keep-flagged", str(FRAMES), "--metrics-port", "0", "--batch", "4"])
    watched = rows(tmp_path / "w")
    flagged = [r for r in watched if r["flag"]]
    own = [r for r in flagged if r["probability"] < 0.5]  # flagged by the smoothing alone
    assert len(flagged) >= 10 and own, "no frame that only the smoothing flagged: the test tests nothing"
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["cameras"]["shake"]["flagged_frames"] == {"saved": len(flagged), "kept": len(flagged), "missed": 0}
    n = len(flagged)
    assert f"{n} flagged ({n / FRAMES:.1%}), {n} saved to flagged/ ({n} kept), 0 reconnects" in capsys.readouterr().out
    decoded = {i: rgb for i, _, rgb in video_frames(str(video))}
    for r in flagged:
        saved = cv2.cvtColor(cv2.imread(str(tmp_path / "w" / r["frame_file"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(saved, decoded[r["frame_index"]])
