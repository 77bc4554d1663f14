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
