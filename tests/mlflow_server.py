"""A real `mlflow server` on 127.0.0.1 for tests (SQLite backend store, artifacts served by the server from a
folder), as the runners of one shared registry reach it: tests/test_registry_server.py, tests/test_pipeline.py."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SERVER_START_S = 120  # a fresh SQLite store is migrated at start: 24 s here on 2 busy cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def wait_healthy(proc: subprocess.Popen, uri: str, log: Path) -> None:
    """Return once GET /health answers; fail with one line if the server exits or stays silent."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}: {last_line(log)}", pytrace=False)
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server at {uri} did not answer /health within {SERVER_START_S} s: {last_line(log)}",
                pytrace=False)


def stop(proc: subprocess.Popen) -> None:
    """End the server and the workers it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)  # uvicorn waits for idle keep-alive connections: 15 s were not enough here
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


@contextmanager
def mlflow_server(root: Path) -> Iterator[tuple[str, Path]]:
    """(tracking URI, the server's folder): `mlflow server` with a SQLite backend store and --artifacts-destination
    in tmp, so clients reach the artifacts only through the server, as runners on other machines would."""
    uri = f"http://127.0.0.1:{free_port()}"
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                                 "--port", uri.rsplit(":", 1)[1], "--workers", "1",
                                 "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                 "--artifacts-destination", str(root / "artifacts")],
                                cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(proc, uri, log)
        yield uri, root
    finally:
        stop(proc)
