"""A real MJPEG-over-HTTP camera for tests and benchmarks: multipart/x-mixed-replace JPEG frames served by an
http.server thread on 127.0.0.1, read by OpenCV's FFmpeg backend as `http://127.0.0.1:PORT/stream.mjpg`.

A camera can be made to misbehave the way field cameras do: drop the connection after N frames and refuse
connections (HTTP 503) for a while before it comes back, or stall (keep the connection open, send nothing).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import cv2
import numpy as np

BOUNDARY = "rsdetectframe"


class MjpegCamera:
    """One MJPEG stream on 127.0.0.1 (a free port). `frame(i)` gives the i-th BGR frame of the whole stream
    (counted across connections). After `frames_per_connection` frames a connection ends: `drop` closes it and
    the camera answers 503 for `down_s`; `stall` keeps it open silently until the client goes away."""

    def __init__(self, frame: Callable[[int], np.ndarray], fps: float = 20.0, frames_per_connection: int | None = None,
                 after: str = "drop", down_s: float = 0.0) -> None:
        if after not in ("drop", "stall"):
            raise ValueError(f"after must be 'drop' or 'stall', got {after!r}")
        self.frame, self.fps, self.per_connection = frame, fps, frames_per_connection
        self.after, self.down_s = after, down_s
        self.connections = 0  # accepted stream connections
        self.refused = 0  # connections answered 503 while down
        self.sent = 0  # frames sent in all
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/stream.mjpg"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes, as with real IP cameras

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                with camera._lock:
                    down = time.monotonic() < camera._down_until
                    camera.refused += down
                    camera.connections += not down
                if down:
                    self.send_error(503, "camera restarting")
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    camera._serve(self.wfile)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away

        return Handler

    def _serve(self, wfile) -> None:
        sent_here = 0
        next_at = time.monotonic()
        while not self._closing.is_set():
            if self.per_connection is not None and sent_here >= self.per_connection:
                if self.after == "stall":
                    while not self._closing.wait(0.05):
                        pass
                with self._lock:
                    self._down_until = time.monotonic() + self.down_s
                return
            with self._lock:
                index = self.sent
                self.sent += 1
            ok, jpg = cv2.imencode(".jpg", self.frame(index), [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            data = jpg.tobytes()
            wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                        + data + b"\r\n")
            wfile.flush()
            sent_here += 1
            next_at += 1.0 / self.fps
            time.sleep(max(0.0, next_at - time.monotonic()))

    def start(self) -> MjpegCamera:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> MjpegCamera:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def solid(bgr: tuple[int, int, int], w: int = 64, h: int = 48) -> np.ndarray:
    """A frame of one colour (BGR)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bgr
    return img
