"""rsdetect/__init__.py: the package's side effects, once. TensorFlow's start-up lines never reach the user; what
anything else writes to stderr while TensorFlow loads still does, and a broken TensorFlow still fails loudly."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
STARTUP_LINE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def run(code: str, *paths: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (*paths, SRC)))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def fake_tensorflow(root: Path, body: str) -> Path:
    """A stand-in `tensorflow` package under `root` whose import runs `body`."""
    (root / "tensorflow").mkdir(parents=True)
    (root / "tensorflow" / "__init__.py").write_text(f"import os, sys, time\n{body}\n")
    return root


@pytest.mark.slow
def test_tensorflow_prints_its_startup_lines_on_its_own():
    """The control: without rsdetect, this TensorFlow writes the lines the package holds back."""
    pytest.importorskip("tensorflow")
    res = run("import tensorflow")
    assert res.returncode == 0
    assert STARTUP_LINE in res.stderr


@pytest.mark.slow
def test_importing_tensorflow_through_rsdetect_prints_no_warning():
    pytest.importorskip("tensorflow")
    res = run("import rsdetect, keras, tensorflow as tf; print(int(tf.constant(2) + 1))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "3"
    assert "WARNING" not in res.stderr and "oneDNN" not in res.stderr, res.stderr


def test_other_stderr_lines_written_while_tensorflow_loads_are_kept(tmp_path):
    fake = fake_tensorflow(tmp_path, f"os.write(2, b'{STARTUP_LINE}\\n')\ntime.sleep(1)\nos.write(2, b'W kept\\n')")
    code = ("import sys, threading, time, rsdetect\n"
            "def tick():\n"
            "    for i in range(10):\n"
            "        print(f'tick {i}', file=sys.stderr, flush=True); time.sleep(0.05)\n"
            "t = threading.Thread(target=tick); t.start()\n"
            "import tensorflow\n"
            "t.join()\n"
            "print('after', file=sys.stderr)\n")
    res = run(code, fake)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert [line for line in lines if line.startswith("tick")] == [f"tick {i}" for i in range(10)]
    assert "W kept" in lines and lines[-1] == "after" and STARTUP_LINE not in lines


def test_a_failing_tensorflow_import_still_raises_and_says_why(tmp_path):
    fake = fake_tensorflow(tmp_path, f"os.write(2, b'{STARTUP_LINE}\\nreal problem\\n')\nraise RuntimeError('broken')")
    res = run("import sys, rsdetect\ntry:\n    import tensorflow\nfinally:\n    print('stderr back', file=sys.stderr)",
              fake)
    assert res.returncode != 0
    assert "real problem" in res.stderr and "RuntimeError: broken" in res.stderr and "stderr back" in res.stderr
    assert STARTUP_LINE not in res.stderr
