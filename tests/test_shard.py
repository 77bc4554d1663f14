"""rsdetect scan with cameras sharded over a local Dask cluster of 2 worker processes (rsdetect.serve.shard): the same
reports, byte for byte, as the single-process scan; failures per camera; Ctrl-C stops the workers' tasks and
keeps what completed; the CLI on an existing scheduler. One cluster for the module (it takes seconds to start).
"""
from __future__ import annotations

import filecmp
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("keras")
pytest.importorskip("distributed")

from test_scan import rows, scan_lines, write_images, write_video  # noqa: E402

from rsdetect import cli  # noqa: E402
from rsdetect.serve.loaders import load_model  # noqa: E402
from rsdetect.serve.scan import ScanOptions, run_scan  # noqa: E402
from rsdetect.serve.shard import describe_model, sharded_cameras  # noqa: E402
from rsdetect.serve.sources import parse_sources  # noqa: E402

pytestmark = pytest.mark.slow  # a local Dask cluster of worker processes

QUIET = dict(progress=False)


def sharded_scan(dask_client, sources, spec: str, out: Path, options: ScanOptions):
    return run_scan(sources, describe_model(dask_client, spec), out, options,
                    cameras=sharded_cameras(dask_client, spec, options))


def cameras(tmp_path: Path) -> list[str]:
    """Four cameras of three kinds, one with a corrupt image and one missing (both failures)."""
    folder = write_images(tmp_path / "stills", [True, False, True, True, False])
    (folder / "img_001.png").write_bytes(b"not a png")
    return [str(write_video(tmp_path / "lobby.avi", {3, 4, 5, 12, 20, 21}, 30)), str(folder),
            f"dock={write_video(tmp_path / 'dock.avi', set(range(8, 19)), 25)}", str(tmp_path / "gone.avi"),
            str(write_video(tmp_path / "gate.avi", {0, 1, 2}, 9))]


def test_sharded_reports_equal_the_single_process_ones(tmp_path, dask_client, colour_tflite, capsys) -> None:
    specs = cameras(tmp_path)
    options = ScanOptions(batch=4, smooth=3, annotate=True, **QUIET)
    one = run_scan(parse_sources(specs), load_model(str(colour_tflite)), tmp_path / "one", options)
    err_one = scan_lines(capsys.readouterr().err)
    two = sharded_scan(dask_client, parse_sources(specs), str(colour_tflite), tmp_path / "two", options)
    err_two = scan_lines(capsys.readouterr().err)
    assert one.exit_code == two.exit_code == 3  # a corrupt image and a missing file
    assert sorted(err_two) == sorted(err_one) and len(err_one) == 2  # each failure one line, from the main process
    a, b = rows(one.out_dir), rows(two.out_dir)
    assert [r["camera"] for r in b] == [r["camera"] for r in a]  # grouped by camera in source order
    assert len(a) == 30 + 4 + 25 + 9
    for ra, rb in zip(a, b, strict=True):
        assert (ra["camera"], ra["frame_index"], ra["flag"]) == (rb["camera"], rb["frame_index"], rb["flag"])
        assert rb["probability"] == pytest.approx(ra["probability"], abs=1e-6)
    assert {r["frame_index"] for r in b if r["camera"] == "dock" and r["flag"]} == set(range(9, 20))  # K=3: 2 of 3
    # The whole report set, byte for byte (the summary has no timing fields).
    files = sorted(str(p.relative_to(one.out_dir)) for p in one.out_dir.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(two.out_dir)) for p in two.out_dir.rglob("*") if p.is_file())
    assert {"summary.json", "frames.jsonl", "frames.csv", "flagged_rate.png", "annotated/lobby.avi"} <= set(files)
    assert len([f for f in files if f.startswith("worst/")]) == 5 + 4 + 5 + 5
    match, mismatch, errors = filecmp.cmpfiles(one.out_dir, two.out_dir, files, shallow=False)
    assert not mismatch and not errors
    # Each worker process that scanned loaded the model once, keyed by its spec.
    from rsdetect.serve import shard

    loaded = dask_client.run(lambda: sorted(shard._MODELS))
    assert loaded and all(v in ([], [str(colour_tflite)]) for v in loaded.values()), loaded


def test_ctrl_c_stops_the_workers_and_keeps_what_completed(tmp_path, dask_client, colour_tflite) -> None:
    quick_a = write_images(tmp_path / "a", [True, False])
    long_b = write_video(tmp_path / "b.avi", set(range(0, 6000, 5)), 6000)  # tens of seconds at --batch 1
    quick_c = write_images(tmp_path / "c", [False, True, True])
    options = ScanOptions(batch=1, **QUIET)

    def interrupt_when_a_and_c_are_done() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = {k for keys in dask_client.has_what().values() for k in keys}
            if any(k.startswith("scan-0-") for k in held) and any(k.startswith("scan-2-") for k in held):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_when_a_and_c_are_done, daemon=True)
    watcher.start()
    result = sharded_scan(dask_client, parse_sources([str(quick_a), str(long_b), str(quick_c)]), str(colour_tflite),
                          tmp_path / "out", options)
    stopped_at = time.monotonic()
    watcher.join(5)
    assert result.exit_code == 130 and result.interrupted
    assert [(r["camera"], r["frame_index"]) for r in rows(result.out_dir)] == \
           [("a", 0), ("a", 1), ("c", 0), ("c", 1), ("c", 2)]  # completed cameras, in source order
    cams = json.loads((result.out_dir / "summary.json").read_text())["cameras"]
    assert [cams[c]["frames_scored"] for c in "abc"] == [2, 0, 3] and cams["c"]["flagged"] == 2
    # The long camera's task saw the stop flag and ended: both workers take new work within seconds.
    free = [dask_client.submit(time.monotonic, workers=[w], allow_other_workers=False, pure=False)
            for w in dask_client.scheduler_info()["workers"]]
    assert max(f.result(timeout=10) for f in free) - stopped_at < 10


def test_cli_on_an_existing_scheduler_and_usage_errors(tmp_path, dask_client, colour_tflite, capsys) -> None:
    video = write_video(tmp_path / "v.avi", {1, 2}, 6)
    address = dask_client.scheduler.address
    cli.main(["scan", "--model-only", str(video), "--model", str(colour_tflite), "--out", str(tmp_path / "out"),
              "--scheduler", address])
    assert "6 frames from 1 cameras, 2 flagged" in capsys.readouterr().out
    assert [r["frame_index"] for r in rows(tmp_path / "out") if r["flag"]] == [1, 2]
    base = ["scan", "--model-only", str(video), "--model", str(colour_tflite), "--out", str(tmp_path / "x")]
    for extra, needle in ((["--workers", "0"], "--workers must be >= 1"),
                          (["--workers", "2", "--scheduler", address], "not both"),
                          (["--scheduler", address, "--model", str(tmp_path / "nope.tflite")],
                           "nope.tflite: model file not found")):
        with pytest.raises(SystemExit) as exc:
            cli.main([*base, *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (extra, err)
        assert needle in err, (extra, err)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_sharded_shear_columns_and_counts_equal_the_single_process_ones(tmp_path, dask_client, colour_tflite) -> None:
    """Flagged frames' shear is measured on the workers from a copy of the Explainer; its counts come back."""
    from rsdetect.config import load_params
    from rsdetect.serve.explain import Explainer

    shear = load_params(Path(__file__).parents[1] / "params.yaml").shear
    specs = [str(write_video(tmp_path / "lobby.avi", {3, 4, 5, 12}, 16)),
             f"dock={write_video(tmp_path / 'dock.avi', {1, 2, 8}, 12)}"]
    options = ScanOptions(batch=4, **QUIET)
    model = load_model(str(colour_tflite))
    one = run_scan(parse_sources(specs), model, tmp_path / "one", options,
                   explain=Explainer(None, model.image_size, model.kind, shear))
    two = run_scan(parse_sources(specs), describe_model(dask_client, str(colour_tflite)), tmp_path / "two", options,
                   explain=Explainer(None, model.image_size, model.kind, shear),
                   cameras=sharded_cameras(dask_client, str(colour_tflite), options))
    a, b = rows(one.out_dir), rows(two.out_dir)
    def key(r: dict) -> tuple:
        return r["frame_index"], r["flag"], r["shear_px"]

    assert [key(r) for r in a] == [key(r) for r in b]
    assert sum(r["flag"] for r in a) == 7
    assert one.summary["explain"] == two.summary["explain"]
    e = two.summary["explain"]
    assert e["shear_measured"] + e["shear_no_edges"] == 7 + 5 + 5  # the flagged rows and each camera's worst frames
