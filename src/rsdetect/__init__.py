"""rsdetect: detect rolling-shutter distortion in camera frames.

The package's side effects live here, once, before any submodule imports TensorFlow, OpenCV or MLflow (which read
these on first use). setdefault everywhere: a user's own values win.
"""
import os

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
