import os
from pathlib import Path

import pytest

from rsdetect.io import staged_dir


def test_staged_dir_replaces_the_folder_only_when_complete(tmp_path):
    out = tmp_path / "synth"
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(out) as stage:
            (stage / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "first"  # the previous complete output survives an interrupt
    with staged_dir(out) as stage:
        (stage / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced whole, no stale file from the old run
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no staging or old folder left behind


def test_staged_dir_removes_what_a_killed_earlier_run_left_but_not_a_newer_one(tmp_path):
    """A SIGKILL'd run cannot clean up its .synth.partial.* (14 MB of JPEGs); the next run removes it."""
    out = tmp_path / "synth"
    dead_partial = tmp_path / ".synth.partial.abc123"
    (dead_partial / "images").mkdir(parents=True)
    (dead_partial / "images" / "x.jpg").write_bytes(b"\xff\xd8 half a photo")
    dead_old = tmp_path / ".synth.old.def456"
    dead_old.mkdir()
    other = tmp_path / ".other.partial.zzz"  # another output's staging folder: not ours to touch
    other.mkdir()
    for p in (dead_partial, dead_old, other):
        os.utime(p, (0, 0))  # modified in 1970: before this process started
    newer = tmp_path / ".synth.partial.live"  # made after this process started: perhaps a live run's, kept
    newer.mkdir()
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("done")
    assert not dead_partial.exists() and not dead_old.exists()
    assert other.exists() and newer.exists()
    assert (out / "a.txt").read_text() == "done"


def test_file_md5_and_default_mode_have_one_home(tmp_path):
    import hashlib

    from rsdetect.datasets import coco
    from rsdetect.io import default_file_mode, file_md5
    from rsdetect.registry import gate

    f = tmp_path / "blob"
    f.write_bytes(b"x" * (3 << 20))  # several read chunks
    assert file_md5(f) == hashlib.md5(f.read_bytes()).hexdigest()
    assert gate.file_md5 is file_md5 and coco.file_md5 is file_md5  # imported, not written again
    mask = os.umask(0)
    os.umask(mask)
    assert default_file_mode() == 0o666 & ~mask


@pytest.mark.slow
def test_dvc_checkout_restores_what_a_failed_repro_removed(tmp_path):
    """What the README says about interrupted runs under `dvc repro`: DVC removes a stage's cached outputs
    before running it, so a run that dies leaves none (staged_dir cannot keep them); `dvc checkout` brings
    back the last committed outputs from the cache."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if dvc is None:
        pytest.skip("dvc is not installed")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([dvc, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert run("init", "--no-scm", "-q").returncode == 0
    (tmp_path / "params.yaml").write_text("v: 1\n")
    # the stage writes out.txt = v, and dies (as an interrupted run does) when v is 2
    script = ("import sys, yaml; v = yaml.safe_load(open('params.yaml'))['v']; "
              "sys.exit(3) if v == 2 else open('out.txt', 'w').write(str(v))")
    added = run("stage", "add", "-q", "-n", "make", "-p", "v", "-o", "out.txt", f'{sys.executable} -c "{script}"')
    assert added.returncode == 0
    assert run("repro", "-q").returncode == 0 and (tmp_path / "out.txt").read_text() == "1"
    (tmp_path / "params.yaml").write_text("v: 2\n")
    assert run("repro", "-q").returncode != 0
    assert not (tmp_path / "out.txt").exists()  # removed by DVC before the stage ran, not by the stage
    assert run("checkout", "-q").returncode == 0
    assert (tmp_path / "out.txt").read_text() == "1"  # the last committed output, from the cache


def test_atomic_file_is_checkable_by_name_and_absent_on_failure(tmp_path):
    from rsdetect.io import atomic_file, default_file_mode

    out = tmp_path / "model.tflite"
    with atomic_file(out, suffix=".tflite") as f:
        f.write(b"model")
        f.flush()
        assert Path(f.name).read_bytes() == b"model" and f.name.endswith(".tflite")  # a checker reads it by path
        assert not out.exists()
    assert out.read_bytes() == b"model" and out.stat().st_mode & 0o777 == default_file_mode()
    with pytest.raises(ValueError):
        with atomic_file(out) as f:
            f.write(b"bad")
            raise ValueError("check failed")
    assert out.read_bytes() == b"model" and [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_save_keras_is_byte_reproducible_and_loads(tmp_path):
    """The same weights saved twice (a second apart) give the same bytes, and the file loads as the model."""
    import time

    import keras
    import numpy as np

    from rsdetect.io import save_keras

    keras.utils.set_random_seed(0)
    def make():
        # Fixed names (a second model in one process would get dense_1), and one dtype policy object shared by
        # two layers, as MobileNetV3's layers share one: Keras writes its Python id() as a shared_object_id.
        policy = keras.DTypePolicy("float32")
        layers = [keras.layers.Dense(4, name="d1", dtype=policy), keras.layers.Dense(2, name="d2", dtype=policy)]
        return keras.Sequential([keras.Input((4,), name="x"), *layers], name="m")

    model = make()
    save_keras(model, tmp_path / "a.keras")
    time.sleep(1.1)  # Keras stamps seconds: an unfixed stamp would differ
    # A structurally identical copy: other Python objects, so other ids in config.json's shared_object_id.
    twin = make()
    twin.set_weights(model.get_weights())
    save_keras(twin, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = keras.saving.load_model(tmp_path / "a.keras")
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras"]  # no temp left behind
