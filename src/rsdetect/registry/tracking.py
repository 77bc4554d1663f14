"""Where MLflow runs go: the tracking URI, the one-line error for a server that cannot be reached, the experiment,
and runs left RUNNING by a killed process on this host, marked FAILED on the next start."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rsdetect.errors import RsdetectError


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root; inside a `dvc exp run --temp` copy (.dvc/tmp/exps/...), the original one."""
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite file at the repository root (absolute: survives temp copies).
    MLflow's HTTP waits are bounded by the package's environment (rsdetect.ENVIRONMENT)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


@contextmanager
def tracking_server(uri: str) -> Iterator[None]:
    """Turn "the HTTP tracking server cannot be reached" (refused, timed out, unknown host) into one RsdetectError
    line naming the URI; every other MLflow error passes through unchanged (it is not the user's setup)."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.exceptions.RequestException) as exc:
        text = str(exc)
        network = isinstance(exc, requests.exceptions.RequestException) or text.startswith("API request to") \
            or "MLFLOW_HTTP_REQUEST_TIMEOUT" in text
        if not (uri.startswith(("http://", "https://")) and network):
            raise
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
        reason = errno.group(1).strip() if errno else "timed out" if "timeout" in text.lower() else "no answer"
        raise RsdetectError(f"MLflow tracking server {uri} cannot be reached ({reason}); start it or set "
                            f"MLFLOW_TRACKING_URI (waits bounded by MLFLOW_HTTP_REQUEST_TIMEOUT="
                            f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT')} s, MLFLOW_HTTP_REQUEST_MAX_RETRIES="
                            f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES')})") from None


def local_process_alive(host: str, pid: int) -> bool | None:
    """Whether process `pid` on `host` still runs: None when `host` is another machine (nobody here can tell)."""
    import socket

    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def run_tags() -> dict[str, str]:
    """Tags every run this package starts carries: who runs it, so a run left RUNNING by a killed process on this
    host can be told from one still running (fail_dead_runs)."""
    import socket

    return {"rsdetect.host": socket.gethostname(), "rsdetect.pid": str(os.getpid())}


def fail_dead_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING runs of the experiment whose process (by run_tags) is dead on this host; say each.

    Why: a SIGKILLed `train` cannot end its own run, and MLflow shows it RUNNING forever."""
    import sys

    import mlflow

    client = mlflow.MlflowClient()
    failed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        host, pid = run.data.tags.get("rsdetect.host"), run.data.tags.get("rsdetect.pid", "")
        if host and pid.isdigit() and local_process_alive(host, int(pid)) is False:
            client.set_terminated(run.info.run_id, status="FAILED")
            failed.append(run.info.run_id)
            print(f"mlflow: run {run.info.run_id} ({run.info.run_name}) was left RUNNING by process {pid}, which is "
                  "gone; marked FAILED", file=sys.stderr)
    return failed


def setup_mlflow(experiment: str = "rsdetect") -> None:
    """Point MLflow at the tracking URI and the experiment (the first request: a server that is down is one line);
    runs left RUNNING by dead processes of this host are marked FAILED first."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with tracking_server(uri):
        fail_dead_runs(mlflow.set_experiment(experiment).experiment_id)


def git_commit() -> str:
    """The current git commit, or 'nogit'."""
    import subprocess

    res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root())
    return res.stdout.strip() if res.returncode == 0 else "nogit"
