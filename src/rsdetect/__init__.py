"""rsdetect: detect rolling-shutter distortion in camera frames.

The package's side effects live here, once, before any submodule imports TensorFlow, OpenCV or MLflow (which read
these on first use). setdefault everywhere: a user's own values win.
"""
import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

__version__ = "0.1.0"

ENVIRONMENT = {
    # TensorFlow's C++ start-up lines (oneDNN notices, CPU feature guards) are not the user's to act on.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # FFmpeg's own connection/parse chatter would bury scan's and watch's one-line reports.
    "OPENCV_FFMPEG_LOGLEVEL": "-8",
    # Runs must be complete when train/register return (the gate reads them straight after).
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    # MLflow's own HTTP defaults (120 s timeout, 7 retries, backoff factor 2) left `register` silent for 251 s and
    # `scan` for 248 s before reporting a tracking server that is down. These give a refused connection a few
    # seconds and a slow but live server 10 s per request.
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
for _key, _value in ENVIRONMENT.items():
    os.environ.setdefault(_key, _value)


# TensorFlow 2.21 logs through absl before absl is initialised, so TF_CPP_MIN_LOG_LEVEL does not reach its start-up
# lines: "WARNING: All log messages before absl::InitializeLog() ..." and the oneDNN notice, twice each, on every
# process that imports it. The only switch for the notice, TF_ENABLE_ONEDNN_OPTS=0, would change the numbers. So the
# first import of tensorflow (keras imports it too) runs with fd 2 caught in a file, and everything else written
# there meanwhile (another thread's line) is passed on afterwards.
TF_STARTUP_LINE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\)"
                             rb"|I0000 .*oneDNN custom operations)")


@contextlib.contextmanager
def _startup_lines_held_back():
    """fd 2 caught in a file for the block; afterwards every line but TF_STARTUP_LINE ones goes on to stderr."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as caught:
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(keepends=True) if not TF_STARTUP_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


class _QuietLoader(importlib.abc.Loader):
    """tensorflow's own loader, run with its start-up lines held back; the module keeps the real loader."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader
        with _startup_lines_held_back():
            self.loader.exec_module(module)


class _QuietTensorflowImport(importlib.abc.MetaPathFinder):
    """Finds tensorflow once, through the other finders, and wraps its loader; then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorflowImport())
