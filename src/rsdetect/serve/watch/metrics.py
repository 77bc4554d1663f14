"""`rsdetect watch`'s Prometheus metrics: per-camera counters, a score histogram and up / last-flagged gauges in
their own CollectorRegistry, served over HTTP by prometheus_client's own server.

Names follow Prometheus conventions: the `rsdetect_` prefix, `_total` on counters, `_seconds` on times
(`_timestamp_seconds` for a unix time), one `camera` label.
"""
from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rsdetect.errors import RsdetectError

# Probability buckets: fine near both ends, where clean frames and flagged frames sit.
SCORE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Rolling-shutter shear in native px: realistic surveillance shear is 1-7 px (a runner at 10 m in 1080p: 2-7 px;
# a shaking mount: 1-4 px); sub-pixel buckets show the noise floor, the top ones fast pans.
SHEAR_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0)
# Shear per ms of readout in native px/ms, readout or not: x a 6-33 ms readout, the 0.05-0.5 px/ms around the
# middle buckets are the 0.3-16 px above (real footage, 95th percentile: a 320x240 road's cars 0.21, walkers in a
# 1280x720 concourse 0.086)
SHEAR_PER_MS_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
READOUT_SOURCES = ("configured", "estimated", "unknown")


# The series of every camera, each with the one label `camera`: (attribute, type, name, help, buckets: a
# histogram's, () for the others). One table, so that add_camera cannot miss a series that __init__ declares.
_PER_CAMERA: tuple[tuple[str, type[Counter | Gauge | Histogram], str, str, tuple[float, ...]], ...] = (
    ("scanned", Counter, "rsdetect_frames_scanned", "Frames scored", ()),
    ("flagged", Counter, "rsdetect_frames_flagged",
     "Frames flagged as rolling-shutter distorted (smoothed score at or above the threshold)", ()),
    ("dropped", Counter, "rsdetect_frames_dropped",
     "Frames read but not scored (scoring fell behind a live stream, or pending at shutdown)", ()),
    ("reconnects", Counter, "rsdetect_reconnects",
     "Stream reconnection attempts after a drop, stall or failed connection", ()),
    ("read_errors", Counter, "rsdetect_read_errors",
     "Read failures: a source that cannot be opened or decoded, a corrupt image, a file that ends early", ()),
    ("score", Histogram, "rsdetect_frame_probability",
     "Per-frame rolling-shutter probability (max over the frame's tiles)", SCORE_BUCKETS),
    ("up", Gauge, "rsdetect_camera_up",
     "1 while the camera delivers frames, 0 while it is down, reconnecting or finished", ()),
    ("last_frame", Gauge, "rsdetect_last_frame_timestamp_seconds",
     "Unix time of the camera's last frame read (0: none yet)", ()),
    ("last_flagged", Gauge, "rsdetect_last_flagged_timestamp_seconds",
     "Unix time of the camera's last flagged frame (0: none yet)", ()),
    ("saved", Counter, "rsdetect_flagged_frames_saved",
     "Flagged video frames saved for the correction step (watch --keep-flagged: flagged/, the newest N kept)", ()),
    ("static", Counter, "rsdetect_frames_static",
     "Video frames in which nothing moved: they cannot show rolling-shutter distortion and are not flagged", ()),
    ("shear", Histogram, "rsdetect_rs_shear_px",
     "Per-frame rolling-shutter shear at native resolution (px between the top and bottom rows of what moves; "
     "frames where it is known)", SHEAR_BUCKETS),
    ("shear_per_ms", Histogram, "rsdetect_shear_px_per_ms",
     "Per-frame shear each ms of sensor readout would give (native px per ms; frames where something moves, "
     "measured without the readout: ranks cameras whose readout is unknown)", SHEAR_PER_MS_BUCKETS),
)


class WatchMetrics:
    """The metrics of one watch, in a registry of their own (tests and a second watcher in one process do not
    collide in the global one). All prometheus_client metrics are thread-safe."""

    # Set from _PER_CAMERA in __init__; declared here so that their types are checked where they are used.
    scanned: Counter
    flagged: Counter
    dropped: Counter
    reconnects: Counter
    read_errors: Counter
    score: Histogram
    up: Gauge
    last_frame: Gauge
    last_flagged: Gauge
    saved: Counter
    static: Counter
    shear: Histogram
    shear_per_ms: Histogram

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._per_camera: list[Counter | Gauge | Histogram] = []
        for attribute, kind, name, doc, buckets in _PER_CAMERA:
            metric = (Histogram(name, doc, ["camera"], buckets=buckets, registry=self.registry) if kind is Histogram
                      else kind(name, doc, ["camera"], registry=self.registry))
            setattr(self, attribute, metric)
            self._per_camera.append(metric)
        # Labelled by camera and by where its value comes from: set_readout keeps one series per camera.
        self.readout = Gauge("rsdetect_readout_seconds", "The camera's sensor readout time: as configured, as "
                             "estimated from its footage, or NaN while unknown (label source)", ["camera", "source"],
                             registry=self.registry)
        self._readout_source: dict[str, str] = {}

    def add_camera(self, camera: str) -> None:
        """Make every series of a camera exist from the start (at 0), so a camera that never delivers a frame
        still shows up, down, in a scrape and in `rsdetect_camera_up == 0` alerts."""
        for metric in self._per_camera:
            metric.labels(camera)
        self.set_readout(camera, None)

    def observe(self, row: dict[str, Any], now: float) -> None:
        """Count one scored frame's row."""
        cam = row["camera"]
        self.scanned.labels(cam).inc()
        self.score.labels(cam).observe(row["probability"])
        if row["flag"]:
            self.flagged.labels(cam).inc()
            self.last_flagged.labels(cam).set(now)
        if row.get("evidence") == "static":
            self.static.labels(cam).inc()
        if row.get("rs_shear_px") is not None:
            self.shear.labels(cam).observe(row["rs_shear_px"])
        if row.get("shear_px_per_ms") is not None and row["evidence"] != "static":
            self.shear_per_ms.labels(cam).observe(row["shear_px_per_ms"])

    def set_readout(self, camera: str, readout: dict[str, Any] | None) -> None:
        """The camera's readout ({ms, source, ...} as summary.json gives it, None: unknown): one series per camera,
        labelled with where the value comes from (the old label's series is removed when it changes)."""
        source = readout["source"] if readout else "unknown"
        value = readout["ms"] / 1000 if readout and readout.get("ms") is not None else float("nan")
        old = self._readout_source.get(camera)
        if old is not None and old != source:
            self.readout.remove(camera, old)
        self._readout_source[camera] = source
        self.readout.labels(camera, source).set(value)

    def follow(self, camera: str, health: dict[str, Any], before: dict[str, Any]) -> None:
        """Set a camera's reader metrics from its health snapshots (CameraHealth.snapshot) where the reader runs
        in another process (rsdetect.serve.watch.shard): counters go up by what grew since `before`, gauges are set."""
        for key, counter in (("reconnects", self.reconnects), ("read_errors", self.read_errors),
                             ("frames_dropped", self.dropped)):
            if health[key] > before[key]:
                counter.labels(camera).inc(health[key] - before[key])
        self.up.labels(camera).set(int(health["up"]))
        if health["last_frame_time"] is not None:
            self.last_frame.labels(camera).set(health["last_frame_time"])
        if health["readout"] != before["readout"]:
            self.set_readout(camera, health["readout"])


def check_port(port: int) -> int:
    """--metrics-port: 0 (any free port) to 65535."""
    if not 0 <= port <= 65535:
        raise RsdetectError(f"--metrics-port must be within [0, 65535] (0: any free port), got {port}")
    return port


class MetricsServer:
    """prometheus_client's HTTP server for a WatchMetrics registry on host:port (port 0: a free one, see
    `.port`). A port that cannot be bound is a one-line error at start, before any slow work."""

    def __init__(self, metrics: WatchMetrics, host: str, port: int) -> None:
        self.metrics, self.host, self.requested = metrics, host, check_port(port)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        try:
            self._server, self._thread = start_http_server(self.requested, self.host, self.metrics.registry)
        except OSError as exc:
            raise RsdetectError(f"--metrics-host/--metrics-port {self.host}:{self.requested}: cannot listen "
                                f"({exc.strerror or exc})") from None
        return self

    @property
    def port(self) -> int:
        """The port it listens on (the one picked, for port 0)."""
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start() if self._server is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

