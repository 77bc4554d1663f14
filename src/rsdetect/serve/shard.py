"""Cameras sharded over the workers of a Dask distributed cluster: `rsdetect scan --workers N` (a local cluster of
N processes) or `--scheduler tcp://host:8786` (an existing cluster).

A camera is the unit of work: its smoothing needs its frames in order, so one worker scans one camera whole and
sends back its rows and state (flags, failures, worst frames as arrays); the main process writes them into the
same reports a single-process scan writes, camera after camera in source order. Each worker process loads a
model once (`worker_model`, keyed by the model spec) and keeps it for every camera it gets.

The generic part, `shard` (items, a per-item callable, a callback per result, a stop flag the callable polls),
knows nothing of scanning, so a long-running service can spread its cameras the same way.
Dask rather than Ray: pip-light (pure Python on top of dask, tornado, msgpack), a true local mode (LocalCluster:
processes on this machine, no daemon), and the same Client API against a cluster of machines.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import dask
import numpy as np
from distributed import Client, Event, KilledWorker, LocalCluster, WorkerPlugin, as_completed, get_worker
from distributed.comm import get_address_host
from tqdm import tqdm

from rsdetect.errors import RsdetectError
from rsdetect.serve.loaders import LoadedModel, load_model
from rsdetect.serve.scan import CameraRunner, ScanOptions, scan_source
from rsdetect.serve.scoring import CameraState, Row, report_failure

T = TypeVar("T")
R = TypeVar("R")
# worker-saturation 1.0: a worker holds only the camera it scans, so the next camera goes to whichever worker
# frees first, never into the queue behind a long video (Dask's default 1.1 lets a 1-thread worker hold 2).
# MALLOC_TRIM_THRESHOLD_ unset (Dask sets 65536 in its workers to hand freed memory back to the OS): with it every
# 640x480 frame array was a fresh mmap and page faults, and the same scan of TFLite-scored video ran at 48 frames/s
# in a worker against 81 in a plain process (cProfile: cvtColor 10x, astype 5x, VideoCapture.retrieve 2x slower).
LOCAL_CONFIG = {"distributed.scheduler.worker-saturation": 1.0,
                "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
WORKER_WAIT_S = 60  # an existing cluster with no worker yet: how long to wait for one
STOP_POLL_S = 0.5  # a running task asks the scheduler whether to stop at most this often (one round trip, ~1 ms)


# ---------------------------------------------------------------- the cluster

def check_workers(workers: int, scheduler: str | None) -> None:
    """--workers and --scheduler, checked before anything starts."""
    if workers < 1:
        raise RsdetectError(f"--workers must be >= 1, got {workers}")
    if scheduler is not None and workers != 1:
        raise RsdetectError("give either --workers N (a local cluster) or --scheduler ADDRESS (an existing one), "
                            "not both")


@contextlib.contextmanager
def open_client(workers: int, scheduler: str | None = None) -> Iterator[Any]:
    """A distributed.Client: on an existing scheduler, or on a local cluster of `workers` single-threaded processes
    on 127.0.0.1 (its HTTP endpoints on a free port of 127.0.0.1: dashboard_address=None still took 8787, so two
    scans would clash, and ":0" bound every interface; Dask's own logging only for errors), closed with the block."""
    check_workers(workers, scheduler)
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise RsdetectError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        with client:
            yield client
        return
    with dask.config.set(LOCAL_CONFIG), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.register_plugin(_IgnoreCtrlC())
        yield client


class _IgnoreCtrlC(WorkerPlugin):
    """A WorkerPlugin for local workers: Ctrl-C in a terminal reaches every process of the group, and workers died
    of it printing two tracebacks each; the main process stops their tasks (StopFlag) and closes the cluster."""

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # a worker process runs its event loop there
            signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------- the generic part

class StopFlag:
    """A cluster-wide "stop now" that a running task polls (Dask cannot stop a task that has started: cancelling
    a future only drops its result). Backed by a named distributed.Event; polled at most every STOP_POLL_S."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._stopped = False
        self._next_poll = 0.0

    def __call__(self) -> bool:
        """True once the flag is set (inside a task: asks the scheduler, at most every STOP_POLL_S)."""
        now = time.monotonic()
        if not self._stopped and now >= self._next_poll:
            self._next_poll = now + STOP_POLL_S
            self._stopped = bool(Event(self.name).is_set())
        return self._stopped

    def __reduce__(self) -> tuple[Any, ...]:
        return StopFlag, (self.name,)


class Stopped(Exception):
    """Raised inside a task whose StopFlag was set: the task ends, its result is not wanted."""


def shard(client: Any, items: Sequence[T], task: Callable[[T, StopFlag], R], on_result: Callable[[int, R], None],
          on_lost: Callable[[int, BaseException], None], ordered: bool = True, name: str = "rsdetect") -> None:
    """Run task(item, stop) for every item on the cluster's workers; on_result(i, result) for each, in item order
    (ordered) or as they finish. A task whose workers died (distributed.KilledWorker) goes to on_lost(i, error);
    any other exception of a task is raised here. On an exception here (Ctrl-C, SIGTERM, a task's error) the stop
    flag is set and the unfinished tasks cancelled; on KeyboardInterrupt the results already finished are still
    handed over (in order, skipping the unfinished) before it is re-raised."""
    token = uuid.uuid4().hex[:12]
    stop = StopFlag(f"{name}-stop-{token}")
    futures = [client.submit(task, item, stop, key=f"{name}-{i}-{token}", pure=False) for i, item in enumerate(items)]
    position = {f.key: i for i, f in enumerate(futures)}
    ready: dict[int, tuple[bool, Any]] = {}  # i -> (lost?, result or error), waiting for its turn
    handed: set[int] = set()

    def collect(i: int, future: Any) -> None:
        try:
            ready[i] = (False, future.result())
        except KilledWorker as exc:
            ready[i] = (True, exc)

    def hand_over(past_gaps: bool) -> None:
        for i in sorted(ready):
            if ordered and not past_gaps and i != len(handed):  # an earlier item is still running
                break
            lost, value = ready.pop(i)
            handed.add(i)
            (on_lost if lost else on_result)(i, value)

    try:
        for future in as_completed(futures):
            collect(position[future.key], future)
            hand_over(past_gaps=False)
    except BaseException as exc:
        # Left set on the scheduler (one small entry per stopped run): clearing it at once could race a task's poll.
        with contextlib.suppress(Exception):  # the cluster may be what failed; the original error matters
            Event(stop.name, client).set()
        for i, future in enumerate(futures):
            finished = future.status == "finished" and i not in ready and i not in handed
            if isinstance(exc, KeyboardInterrupt) and finished:
                collect(i, future)  # before cancelling: a cancelled future's result is dropped
        client.cancel([f for f in futures if not f.done()])
        if isinstance(exc, KeyboardInterrupt):
            hand_over(past_gaps=True)
        raise


# ---------------------------------------------------------------- models on workers

_MODELS: dict[str, LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def host_threads() -> int | None:
    """Inside a Dask worker: this machine's cores shared out among the worker threads the cluster has on it, so
    that N workers' TFLite / ONNX runtimes do not each start a thread per core; None elsewhere (all cores)."""
    try:
        me = get_worker()
    except ValueError:  # not in a worker's task
        return None
    host = get_address_host(me.address)
    workers = me.client.scheduler_info(n_workers=-1)["workers"].values()
    threads_here = sum(w["nthreads"] for w in workers if w["host"] == host) or 1
    return max(1, (os.cpu_count() or 1) // threads_here)


def worker_model(spec: str) -> LoadedModel:
    """The model for `spec`, loaded once per worker process (its runtime on host_threads()) and kept for every
    later camera."""
    with _MODELS_LOCK:
        if spec not in _MODELS:
            _MODELS[spec] = load_model(spec, host_threads())
        return _MODELS[spec]


def model_meta(spec: str) -> tuple[int, float | None, str]:
    """On a worker: its model for `spec` loaded (once); (image size, registered threshold, kind)."""
    model = worker_model(spec)
    return model.image_size, model.threshold, model.kind


def _on_workers_only(batch: np.ndarray) -> np.ndarray:
    raise RuntimeError("this model scores on Dask workers (rsdetect.serve.shard.worker_model), not here")


def describe_model(client: Any, spec: str) -> LoadedModel:
    """The model loaded on every worker now (in parallel, not on each one's first camera), described as a worker
    loads it (size, registered threshold, kind) for the reports; its scorer lives on the workers. A bad spec raises
    the worker's one-line RsdetectError here, before any camera is sent."""
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise RsdetectError(f"the Dask cluster at {client.scheduler.address} has no workers "
                            f"(waited {WORKER_WAIT_S} s)") from None
    loads = [client.submit(model_meta, spec, pure=False, workers=[w]) for w in client.scheduler_info()["workers"]]
    size, threshold, kind = client.gather(loads)[0]
    return LoadedModel(_on_workers_only, size, threshold, kind, spec)


# ---------------------------------------------------------------- scanning a camera on a worker

def scan_camera(state: CameraState, stop: StopFlag, spec: str, options: ScanOptions) -> tuple[CameraState, list[Row]]:
    """One camera scanned whole on a worker: its finished state and rows (failures printed by the main process)."""
    rows: list[Row] = []

    def emit(row: Row) -> None:
        rows.append(row)
        if stop():
            raise Stopped(state.source.camera)

    state.echo = False
    scan_source(state, worker_model(spec), dataclasses.replace(options, progress=False), emit)
    return state, rows


def sharded_cameras(client: Any, spec: str, options: ScanOptions) -> CameraRunner:
    """A run_scan runner that scans each camera whole on a worker of `client`, with the model `spec`."""
    def run(states: list[CameraState], emit: Callable[[Row], None], done: Callable[[CameraState], None]) -> None:
        def on_result(i: int, result: tuple[CameraState, list[Row]]) -> None:
            state, rows = result
            for row in rows:
                emit(row)
            for message in state.errors:
                report_failure(state.source.camera, message)
            state.echo = True
            done(state)
            bar.update()

        def on_lost(i: int, exc: BaseException) -> None:
            states[i].fail(f"its Dask worker died while scanning it ({str(exc).splitlines()[0][:160]})")
            done(states[i])
            bar.update()

        with tqdm(desc="cameras", total=len(states), unit="camera", disable=not options.progress,
                  file=sys.stderr) as bar:
            shard(client, states, functools.partial(scan_camera, spec=spec, options=options), on_result, on_lost,
                  name="scan")
    return run
