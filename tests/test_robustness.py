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
    assert [n for n, _ in read_cameras_yaml(cams)] == ["door", "hall"]


# ---------------------------------------------------------------- 18: Ctrl-C in a stage

def test_ctrl_c_in_a_stage_is_one_line_and_exit_130():
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
