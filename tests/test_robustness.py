"""Issue 23: bad input, interruption and hostile files give a one-line error or a counted skip, nothing half-written."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rsdetect.errors import RsdetectError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture
def ctrl_c_reaches_children():
    """Children started with SIGINT at its default, as a terminal starts its foreground job. A child inherits an
    ignored SIGINT (Python then installs no KeyboardInterrupt handler), and a shell without job control starts every
    `cmd &` with SIGINT ignored: run that way (`nohup bash .ci/run &`), pytest ignored it and so did the children of
    the Ctrl-C tests, which slept 30 s and exited 0. Any handler in this process (not SIG_IGN) execs as the default."""
    import signal

    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


# ---------------------------------------------------------------- 16: duplicate YAML keys

def test_a_key_written_twice_in_params_is_one_line_naming_key_and_file(tmp_path):
    from rsdetect.config import ConfigError, load_params

    text = (ROOT / "params.yaml").read_text()
    bad = tmp_path / "params.yaml"
    bad.write_text(text + "\nseed: 7\n")
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    msg = str(err.value)
    assert str(bad) in msg and "'seed'" in msg and "twice" in msg and "\n" not in msg


def test_a_camera_written_twice_in_a_cameras_file_is_refused(tmp_path):
    from rsdetect.serve.sources import read_cameras_yaml

    cams = tmp_path / "cams.yaml"
    cams.write_text("cameras:\n  door: a.avi\n  hall: b.avi\n  door: c.avi\n")
    with pytest.raises(RsdetectError, match=r"cams\.yaml: key 'door' appears twice \(line 4\)"):
        read_cameras_yaml(cams)
    cams.write_text("cameras:\n  door: a.avi\n  hall: b.avi\n")
    assert [n for n, _, _ in read_cameras_yaml(cams)] == ["door", "hall"]


# ---------------------------------------------------------------- 18: Ctrl-C in a stage

def test_ctrl_c_in_a_stage_is_one_line_and_exit_130(ctrl_c_reaches_children):
    r = run_python("""
        import os, signal, time
        from rsdetect.stage import run_stage
        def main():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        run_stage(main)
    """)
    assert (r.returncode, r.stderr) == (130, "interrupted\n")


# ---------------------------------------------------------------- 9: what a killed run leaves

def test_a_killed_runs_temp_file_is_removed_by_the_next_write_and_ignored_by_git(tmp_path):
    from rsdetect.io import atomic_write_text

    dead_tmp = tmp_path / ".annotations.zip.k3j2.tmp"  # a SIGKILLed download
    dead_tmp.write_bytes(b"half")
    os.utime(dead_tmp, (0, 0))
    other = tmp_path / ".other.zip.k3j2.tmp"
    other.write_bytes(b"not ours")
    os.utime(other, (0, 0))
    atomic_write_text(tmp_path / "annotations.zip", "whole")
    assert not dead_tmp.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.zip.k3j2.tmp", "annotations.zip"]

    # a SIGKILLed synthesize, run for real: its staging folder is left, then removed by the next run
    r = run_python(f"""
        import os, signal
        from rsdetect.io import staged_dir
        with staged_dir({str(tmp_path / 'synth')!r}) as stage:
            (stage / "a.jpg").write_bytes(b"x")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert r.returncode == -9
    left = list(tmp_path.glob(".synth.partial.*"))
    assert len(left) == 1
    r = run_python(f"""
        from rsdetect.io import staged_dir
        with staged_dir({str(tmp_path / 'synth')!r}) as stage:
            (stage / "b.jpg").write_bytes(b"y")
    """)  # the next run: a new process, started after the killed one
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob(".synth.*")) and [p.name for p in (tmp_path / "synth").iterdir()] == ["b.jpg"]


@pytest.mark.parametrize("leftover", ["data/.synth.partial.ab12/images/x.jpg", "data/.synth.old.ab12/m.csv",
                                      "metrics/.evaluate.json.x1y2.tmp", "watch-out/.staging.q1/summary.json"])
def test_git_ignores_staging_leftovers(leftover):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "--no-index", "-q", leftover], cwd=ROOT)
    assert r.returncode == 0, f"{leftover} is not ignored"
    kept = subprocess.run(["git", "check-ignore", "--no-index", "-q", "data/synth.dvc"], cwd=ROOT)
    assert kept.returncode == 1


# ---------------------------------------------------------------- 7: the Dask dashboard

def test_local_dask_cluster_listens_on_loopback_only():
    psutil = pytest.importorskip("psutil")
    from rsdetect.serve.shard import open_client

    with open_client(1) as client:
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        listening = {(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        dashboard = client.dashboard_link
    assert listening, "the cluster listens somewhere"
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    assert "127.0.0.1" in dashboard


# ---------------------------------------------------------------- scan: long names, unreadable folders, short AVIs

def write_avi(path: Path, n: int, claim: int | None = None, red: bool = True) -> Path:
    """An MJPG .avi of n 64x48 frames; with `claim`, its headers (avih dwTotalFrames, strh dwLength) say `claim`
    frames, as an AVI whose index over-counts does."""
    import struct

    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for _ in range(n):
        writer.write(np.full((48, 64, 3), (50, 90, 200) if red else (200, 90, 50), np.uint8))
    writer.release()
    if claim is not None:
        data = bytearray(path.read_bytes())
        struct.pack_into("<I", data, data.find(b"avih") + 8 + 16, claim)
        struct.pack_into("<I", data, data.find(b"strh") + 8 + 32, claim)
        path.write_bytes(bytes(data))
    return path


def test_a_video_a_few_frames_short_of_its_claim_is_whole_and_the_shortfall_noted(tmp_path):
    from rsdetect.serve.sources import SourceError, video_frames

    notes: list[str] = []
    short = write_avi(tmp_path / "short.avi", 200, claim=202)
    assert len(list(video_frames(str(short), on_note=notes.append))) == 200
    assert notes == [f"{short}: 200 frames decoded of the 202 its container claims (2 short; counted, not a failure)"]
    cut = write_avi(tmp_path / "cut.avi", 200, claim=260)  # 23% missing: a cut copy, still a failure
    with pytest.raises(SourceError, match="ended early after 200 of 260 frames"):
        list(video_frames(str(cut), on_note=notes.append))
    whole = write_avi(tmp_path / "whole.avi", 20)
    assert len(list(video_frames(str(whole), on_note=notes.append))) == 20 and len(notes) == 1


def test_scan_survives_a_long_camera_name_an_unreadable_folder_and_a_short_avi(tmp_path, monkeypatch, capsys):
    pytest.importorskip("keras")
    import json

    from rsdetect import cli

    from conftest import colour_model

    model = tmp_path / "colour.keras"
    colour_model(32).save(model)
    long_name = "c" * 250
    good = write_avi(tmp_path / "good.avi", 6)
    short = write_avi(tmp_path / "short.avi", 200, claim=202)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.png").write_bytes(b"")
    real_iterdir = Path.iterdir

    def iterdir(self):  # the tests run as root, for whom chmod 000 changes nothing: refuse as the kernel would
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main(["scan", f"{long_name}={good}", str(locked), str(short), "--model", str(model), "--out", str(out)])
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"scan: locked: {locked}: cannot list folder (Permission denied)" in err
    assert "note: " in err and "(2 short; counted, not a failure)" in err
    cams = json.loads((out / "summary.json").read_text())["cameras"]
    assert {n: (c["frames_scored"], c["failures"]) for n, c in cams.items()} == \
        {long_name: (6, 0), "locked": (0, 1), "short": (200, 0)}
    worst = cams[long_name]["worst_frames"]
    assert worst and all((out / w["path"]).is_file() and len(Path(w["path"]).name) < 255 for w in worst)


# ---------------------------------------------------------------- 5, 17: pixel limits of every image read

def jpeg(width: int, height: int) -> bytes:
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


@pytest.fixture
def limit_400(monkeypatch):
    """images.max_pixels of 20x20 (as load_params would set it from params.yaml), undone after the test."""
    from rsdetect import limits

    monkeypatch.setattr(limits, "_max_pixels", 400)


def test_load_params_sets_the_decode_limit(tmp_path, monkeypatch):
    import yaml

    from rsdetect import limits
    from rsdetect.config import load_params

    from conftest import params_raw

    monkeypatch.setattr(limits, "_max_pixels", limits.FALLBACK_MAX_PIXELS)  # undone after the test
    assert limits.max_pixels() == limits.FALLBACK_MAX_PIXELS \
        == yaml.safe_load((ROOT / "params.yaml").read_text())["images"]["max_pixels"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw({"images": {"max_pixels": 1234}})))
    load_params(tmp_path / "params.yaml")
    assert limits.max_pixels() == 1234


def test_every_decoder_refuses_an_image_over_the_limit_before_decoding(tmp_path, limit_400, monkeypatch):
    import cv2

    from rsdetect.datasets.instances import SkipImage, decode_image
    from rsdetect.preprocess import decode

    big = tmp_path / "big.jpg"
    big.write_bytes(jpeg(21, 20))
    decodes = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decodes.append(1) or real(*a))
    with pytest.raises(RsdetectError, match=rf"^{big}: image too large: 21x20 px is over the limit of 400 pixels"):
        decode(big)
    with pytest.raises(SkipImage, match="too large: 21x20 px"):
        decode_image(big.read_bytes())
    assert decodes == []  # refused from the header: nothing was decoded
    ok = tmp_path / "ok.jpg"
    ok.write_bytes(jpeg(20, 20))
    assert decode(ok).shape == (20, 20, 3) and decode_image(ok.read_bytes()).shape == (20, 20, 3)


def test_images_under_16_px_are_refused_by_every_decoder(tmp_path):
    from rsdetect.datasets.instances import SkipImage, decode_image
    from rsdetect.preprocess import decode

    tiny = tmp_path / "tiny.jpg"
    tiny.write_bytes(jpeg(1, 1))
    with pytest.raises(RsdetectError, match=rf"^{tiny}: image too small: 1x1 px \(a side under 16 px\)$"):
        decode(tiny)
    with pytest.raises(SkipImage, match="too small: 1x1 px"):
        decode_image(tiny.read_bytes())
    thin = tmp_path / "thin.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(thin), np.zeros((15, 300, 3), np.uint8))
    with pytest.raises(RsdetectError, match="too small: 300x15 px"):
        decode(thin)


def test_scan_counts_images_outside_the_limits_and_scores_the_rest(tmp_path, limit_400):
    from rsdetect.serve.sources import SourceError, parse_sources

    folder = tmp_path / "shots"
    folder.mkdir()
    for name, (w, h) in {"a.jpg": (20, 20), "b.jpg": (1, 1), "c.jpg": (40, 40), "d.jpg": (16, 18)}.items():
        (folder / name).write_bytes(jpeg(w, h))
    errors: list[str] = []
    (source,) = parse_sources([str(folder)])
    assert [i for i, _, _ in source.frames(errors.append)] == [0, 3]  # b and c never reach the model
    assert [e.split(": ", 1)[1] for e in errors] == [
        "image too small: 1x1 px (a side under 16 px)",
        "image too large: 40x40 px is over the limit of 400 pixels (images.max_pixels)"]
    video = write_avi(tmp_path / "v.avi", 3)  # 64x48 frames: 3072 px
    with pytest.raises(SourceError, match=r"v\.avi: frames too large: 64x48 px"):
        list(parse_sources([str(video)])[0].frames(errors.append))


def test_synthesis_skips_and_counts_a_photo_outside_the_limits(tmp_path, limit_400):
    from rsdetect.synth.twins import SkipImage, read_photo

    (tmp_path / "huge.jpg").write_bytes(jpeg(30, 30))
    (tmp_path / "dot.jpg").write_bytes(jpeg(1, 1))
    for name, why in [("huge.jpg", "too large"), ("dot.jpg", "too small")]:
        with pytest.raises(SkipImage, match=why):
            read_photo(tmp_path, name)


# ---------------------------------------------------------------- 13: an output that is a symbolic link

def test_an_out_folder_that_is_a_link_is_written_into_its_target(tmp_path):
    from rsdetect.io import staged_dir

    target = tmp_path / "disk" / "reports"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("earlier")
    link = tmp_path / "out"
    link.symlink_to(target)
    with staged_dir(link) as stage:
        (stage / "summary.json").write_text("{}")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sorted(p.name for p in target.iterdir()) == ["summary.json"]
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["reports"]  # no staging leftovers


def test_an_out_file_that_is_a_link_is_written_into_its_target(tmp_path):
    from rsdetect.io import atomic_write_text

    target = tmp_path / "models" / "m.tflite"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.tflite"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_scan_out_linked_to_the_working_folder_is_refused(tmp_path, monkeypatch):
    from rsdetect.serve.report_dir import check_report_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").symlink_to(tmp_path)
    with pytest.raises(RsdetectError, match="is the current folder or above it"):
        check_report_dir(tmp_path / "here", lambda name: True)


# ---------------------------------------------------------------- 11, 12: malformed instances files

def test_fetch_merge_skips_and_counts_malformed_image_entries(tmp_path):
    import json
    import shutil

    from rsdetect.datasets.drawn import make_sample_dataset

    drawn, real = tmp_path / "sample", tmp_path / "real"
    make_sample_dataset(drawn, seed=1, n_images=4, width=80, height=60)
    shutil.copytree(drawn, real)
    coco = json.loads((real / "instances.json").read_text())
    first, second, third = coco["images"][:3]
    bad_ids = {first["id"], second["id"], third["id"]}
    orphaned = sum(a["image_id"] in bad_ids for a in coco["annotations"])  # annotations of the three bad entries
    del first["file_name"]                       # KeyError in the merge before
    second["id"] = "abc"                         # TypeError in the merge before
    third["file_name"] = "a\0b.png"              # ValueError (embedded null byte) in synthesize before
    coco["annotations"].append({"id": "x", "image_id": first["id"], "category_id": 1})
    (real / "instances.json").write_text(json.dumps(coco))
    out = tmp_path / "raw"
    r = subprocess.run([sys.executable, str(ROOT / "src/fetch.py"), str(drawn), str(real), str(out)], cwd=ROOT,
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert sorted((s["part"], s["reason"]) for s in report["skipped_images"]) == [
        ("real", "file_name contains a NUL byte"), ("real", "image entry has no file_name"),
        ("real", "image entry has no integer id")]
    merged = json.loads((out / "instances.json").read_text())
    assert report["images"] == len(merged["images"]) == 4 + 1
    n_anns = len(json.loads((drawn / "instances.json").read_text())["annotations"])
    assert report["skipped_annotations"] == orphaned + 1  # ... and the one with id "x"
    assert len(merged["annotations"]) == 2 * n_anns - orphaned
    assert all("\0" not in im["file_name"] for im in merged["images"])


def test_synthesis_counts_a_nul_byte_file_name_as_a_skipped_image(tmp_path):
    import json

    from rsdetect.datasets.instances import checked_instances

    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "ok.jpg"}, {"id": 2, "file_name": "bad\0.jpg"}], "annotations": []}))
    checked = checked_instances(tmp_path / "instances.json")
    assert [im["id"] for im in checked.images] == [1]
    assert checked.skipped_images == [{"image_id": 2, "file": "bad\0.jpg", "reason": "file_name contains a NUL byte"}]


# ---------------------------------------------------------------- 15: check-photos' --exclude

@pytest.fixture
def photo_folder(tmp_path):
    import json

    from rsdetect.datasets.drawn import make_sample_dataset

    src = tmp_path / "src"
    make_sample_dataset(src, seed=2, n_images=6, width=80, height=60)
    folder = tmp_path / "photos"
    (folder / "images").mkdir(parents=True)
    for p in (src / "images").iterdir():
        (folder / "images" / p.name).write_bytes(p.read_bytes())
    coco = json.loads((src / "instances.json").read_text())
    del coco["images"][0]["file_name"]  # refused by the instances checks: counted, not silently dropped
    (folder / "instances_x.json").write_text(json.dumps(coco))
    return folder, coco


def test_check_photos_counts_what_it_leaves_out_and_finds_the_default_exclude_from_anywhere(photo_folder, tmp_path,
                                                                                            monkeypatch):
    import json

    from rsdetect.evaluation.photos import held_out_photos

    folder, coco = photo_folder
    project = tmp_path / "project"
    (project / "data" / "coco-licensed").mkdir(parents=True)
    (project / "data" / "coco-licensed" / "instances.json").write_text(json.dumps({"images": coco["images"][1:3]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    default = ["data/coco-licensed/instances.json"]
    with pytest.raises(RsdetectError, match=r"^--exclude data/coco-licensed/instances\.json: no such instances file;"):
        held_out_photos([folder], default)  # no project folder to look in: one line, not a traceback
    photos = held_out_photos([folder], default, base=project)
    assert sorted(im["id"] for _, im, _ in photos) == sorted(im["id"] for im in coco["images"][3:])
    assert photos.excluded == 2
    assert [(e["image_id"], e["reason"]) for e in photos.skipped_entries] == [(coco["images"][0]["id"],
                                                                              "image entry has no file_name")]


@pytest.mark.parametrize("content, why", [('{"annotations": []}', "not an instances file \\(needs an 'images' list\\)"),
                                          ("[1, 2]", "not an instances file"), ("{oops", "cannot read it as JSON")])
def test_a_malformed_exclude_file_is_one_line(photo_folder, tmp_path, content, why):
    from rsdetect.evaluation.photos import held_out_photos

    bad = tmp_path / "seen.json"
    bad.write_text(content)
    with pytest.raises(RsdetectError, match=rf"^--exclude {bad}: {why}"):
        held_out_photos([photo_folder[0]], [bad])


def test_check_photos_cli_with_a_malformed_exclude_is_one_line(photo_folder, tmp_path, capsys):
    pytest.importorskip("keras")
    from rsdetect import cli

    from conftest import colour_model

    model, evaluation = tmp_path / "m.keras", tmp_path / "evaluate.json"
    colour_model(32).save(model)
    evaluation.write_text('{"models": {"cnn": {"threshold": 0.5}}}')
    (tmp_path / "seen.json").write_text('{"annotations": []}')
    with pytest.raises(SystemExit) as exc:
        cli.main(["check-photos", str(photo_folder[0]), "--exclude", str(tmp_path / "seen.json"), "--model", str(model),
                  "--evaluation", str(evaluation), "--params", str(ROOT / "params.yaml"),
                  "--out", str(tmp_path / "r.json")])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (f"error: --exclude {tmp_path / 'seen.json'}: "
                                       "not an instances file (needs an 'images' list)\n")
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- 6: a hostile model folder

class _Hostile:
    """Unpickling this runs code: it writes a marker file, then raises (a hostile python_model.pkl)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        code = f"open({self.marker!r}, 'w').write('ran'); raise RuntimeError('hostile payload')"
        return (exec, (code,))


def test_a_hostile_pyfunc_folder_runs_its_code_but_ends_in_one_line(tmp_path, capsys):
    """Why docs/security.md says model folders must be trusted: loading one runs its code. The error is one line."""
    mlflow = pytest.importorskip("mlflow")
    import pickle
    import warnings

    from rsdetect import cli

    folder = tmp_path / "model"
    with warnings.catch_warnings():  # MLflow's advice on type hints, for the stand-in model
        warnings.simplefilter("ignore")

        class Echo(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input):
                return model_input

        mlflow.pyfunc.save_model(folder, python_model=Echo())
    marker = tmp_path / "pwned"
    (folder / "python_model.pkl").write_bytes(pickle.dumps(_Hostile(str(marker))))
    video = write_avi(tmp_path / "v.avi", 2)
    capsys.readouterr()  # MLflow's own notes while saving the folder above
    with pytest.raises(SystemExit) as exc:
        cli.main(["scan", str(video), "--model", str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and marker.read_text() == "ran"
    assert err.startswith(f"error: {folder}: cannot load model (RuntimeError: hostile payload); ")
    assert err.count("\n") == 1
    assert "docs/security.md" in err and not (tmp_path / "out").exists()


def test_file_stems_are_bounded_and_stay_unique():
    from rsdetect.serve.reports import MAX_STEM, file_stems

    a, b = "x" * 250, "x" * 249 + "y"  # alike for their first MAX_STEM characters
    stems = file_stems([a, b, "door", "door!"])
    assert all(len(s) <= MAX_STEM for s in stems.values())
    assert len(set(stems.values())) == 4
    assert stems["door"] != stems["door!"] and stems["door"].startswith("door")
    assert stems[a].startswith("x" * (MAX_STEM - 9)) and stems[a] != stems[b]
    assert file_stems(["door"]) == {"door": "door"}  # short, unique names are kept as they are


def test_watch_keeps_the_reports_of_a_long_named_camera_and_a_short_avi(tmp_path, capsys):
    pytest.importorskip("keras")
    from rsdetect.serve.loaders import load_model
    from rsdetect.serve.sources import parse_sources
    from rsdetect.serve.watch.loop import WatchOptions, run_watch
    from rsdetect.serve.watch.metrics import WatchMetrics

    from conftest import colour_model

    path = tmp_path / "colour.keras"
    colour_model(32).save(path)
    long_name = "w" * 250
    sources = parse_sources([f"{long_name}={write_avi(tmp_path / 'good.avi', 6)}",
                             str(write_avi(tmp_path / "short.avi", 200, claim=202))])
    result = run_watch(sources, load_model(str(path)), tmp_path / "w",
                       WatchOptions(batch=4, reconnect_initial=0.2, reconnect_max=0.4, stall_timeout=2.0,
                                    summary_interval=0.3, queue_frames=256), WatchMetrics())
    assert result.stopped_by == "sources ended"
    cams = result.summary["cameras"]
    assert cams[long_name]["frames_scored"] == 6 and cams["short"]["frames_scored"] == 200
    assert all((result.out_dir / w["path"]).is_file() for w in cams[long_name]["worst_frames"])
    assert "(2 short; counted, not a failure)" in capsys.readouterr().err


def test_a_small_jpeg_declaring_20000x20000_pixels_is_refused_without_allocating_them():
    """715 bytes whose header says 20000 x 20000: OpenCV alone decodes it into 1.2 GB (peak RSS +2.3 GB measured);
    decode refuses it from the header. Run in a fresh process so the peak RSS is this decode's."""
    r = run_python("""
        import resource, struct
        import cv2, numpy as np
        from rsdetect.errors import RsdetectError
        from rsdetect.preprocess import decode
        data = bytearray(cv2.imencode(".jpg", np.full((64, 64, 3), 120, np.uint8))[1].tobytes())
        struct.pack_into(">HH", data, data.find(b"\\xff\\xc0") + 5, 20000, 20000)  # SOF0 height, width
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode(bytes(data), "huge.jpg")
        except RsdetectError as exc:
            print(exc)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    message, grown_mb = r.stdout.splitlines()
    assert message.startswith("huge.jpg: image too large: its header declares over ")
    assert int(grown_mb) < 100  # a decode would need 1200 MB for the pixels alone


def test_ctrl_c_during_synthesize_with_worker_processes_is_one_line(tmp_path, ctrl_c_reaches_children):
    """Ctrl-C in a terminal reaches the whole process group (the stage and its spawned workers): one line, exit
    130, no staging folder left. The signal is sent once the progress bar shows ten photos or more done, so the
    workers are busy on photos (before issue 23 each printed a KeyboardInterrupt traceback, and a staging folder
    was left behind when they wrote into it after its removal)."""
    import json
    import re
    import signal

    import yaml

    from rsdetect.datasets.drawn import make_sample_dataset

    from conftest import params_raw

    raw = tmp_path / "raw"
    make_sample_dataset(raw, seed=1, n_images=8, width=160, height=160)
    coco = json.loads((raw / "instances.json").read_text())
    # 4000 entries over the same 8 files: far more work than the time it takes to see it start
    images = [{**coco["images"][i % 8], "id": i + 1} for i in range(4000)]
    anns = [{**a, "id": 100_000 * (i + 1) + a["id"], "image_id": i + 1} for i in range(4000)
            for a in coco["annotations"] if a["image_id"] == coco["images"][i % 8]["id"]]
    (raw / "instances.json").write_text(json.dumps({**coco, "images": images, "annotations": anns}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw({"synthesize": {"workers": 2}})))
    proc = subprocess.Popen([sys.executable, str(ROOT / "src/synthesize.py"), "raw", "synth", "m.json", "fig.png"],
                            cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = ""
    while not re.search(r"\| [1-9]\d+/4000", seen[-80:]) and proc.poll() is None:  # workers busy on photos
        seen += proc.stderr.read(1)
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    lines = [line for line in (seen + rest).replace("\r", "\n").splitlines() if line and "synthesize:" not in line]
    assert lines == ["interrupted"], repr((seen + rest)[-300:])
    assert not (tmp_path / "synth").exists() and not list(tmp_path.glob(".synth.*"))


def test_scan_and_watch_count_a_short_video_as_a_note_not_a_failure(tmp_path, capfd):
    """The shortfall of a video a few frames short of its header reaches the reports: summary.json's `notes` in
    scan and watch, the camera not failed, exit 0."""
    from rsdetect.serve.loaders import load_model
    from rsdetect.serve.scan import ScanOptions, run_scan
    from rsdetect.serve.sources import parse_sources
    from rsdetect.serve.watch.loop import WatchOptions, run_watch
    from rsdetect.serve.watch.metrics import WatchMetrics

    from conftest import colour_model

    short = write_avi(tmp_path / "short.avi", 200, claim=202)
    colour_model(32).save(tmp_path / "m.keras")
    model = load_model(str(tmp_path / "m.keras"))
    note = f"{short}: 200 frames decoded of the 202 its container claims (2 short; counted, not a failure)"
    scanned = run_scan(parse_sources([str(short)]), model, tmp_path / "s", ScanOptions(progress=False))
    cam = scanned.summary["cameras"]["short"]
    assert scanned.exit_code == 0 and cam["failures"] == 0 and cam["notes"] == [note] and cam["frames_scored"] == 200
    watched = run_watch(parse_sources([str(short)]), model, tmp_path / "w", WatchOptions(queue_frames=256),
                        WatchMetrics())
    cam = watched.summary["cameras"]["short"]
    assert cam["failures"] == 0 and cam["notes"] == [note] and cam["frames_scored"] == 200
    err = capfd.readouterr().err
    assert f"scan: short: note: {note}" in err and f"watch: short: note: {note}" in err
