"""`rsdetect watch --workers N / --scheduler ADDRESS`: cameras watched on the workers of a Dask cluster.

The cameras are split into one group per worker thread, and each group is one long-lived Dask task
(`watch_group`) that runs what a single-process watch runs (rsdetect.serve.watch.loop.CameraLoop: the same readers with
their reconnects, backoff and stall timeout; the worker's cached model, rsdetect.serve.shard.worker_model; scan's
score_items) and streams small messages back through a distributed.Queue: the rows as scored, its cameras'
health at least every HEALTH_S, their worst frames when they change (at most once a summary interval), and what
the Explainer copy counted. This process turns them into the same metrics and reports a single-process watch
keeps (rsdetect.serve.watch.loop.WatchRecord), serves /metrics, and stops the tasks through a StopFlag on SIGTERM,
Ctrl-C, --duration; a watch whose tasks have all ended (files, --max-frames) stops by itself.

A worker that dies: Dask runs its task again on another worker (a camera then starts again: a file from its
first frame, a stream from now; counted as a read error); a task that killed `allowed-failures` workers leaves its
cameras down and failed, with a one-line error, while the others go on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import pickle
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from distributed import Event, KilledWorker, Queue

from rsdetect.errors import RsdetectError
from rsdetect.serve.explain import Explainer
from rsdetect.serve.loaders import LoadedModel
from rsdetect.serve.report_dir import OutputLock
from rsdetect.serve.scoring import Row
from rsdetect.serve.shard import StopFlag, worker_model
from rsdetect.serve.sources import Source, StreamSource
from rsdetect.serve.watch.loop import CameraLoop, WatchOptions, WatchRecord, WatchResult, watch_session
from rsdetect.serve.watch.metrics import WatchMetrics
from rsdetect.serve.watch.readers import RECENT_ERRORS, CameraHealth, say

HEALTH_S = 1.0  # a task sends its cameras' health at least this often: how fresh up/down and counters are
ROWS_S = 0.2  # and its rows at most this often (one scheduler round trip each, ~1 ms)
POLL_S = 0.05  # this process asks for messages this often while none come
STOP_WAIT_S = 30.0  # after the stop flag, how long tasks get to score what they read (readers: 3 s) and report
COUNTERS = ("connections", "reconnects", "read_errors", "frames_dropped")  # summed over a camera's tasks


# ---------------------------------------------------------------- on a worker

class Outbox:
    """A task's messages to the watching process, each one pickled dict in the Queue (the Queue carries msgpack
    data through the scheduler; pickle's bytes carry the worst frames' arrays as well)."""

    def __init__(self, queue: Queue, summary_interval: float, explain: Explainer | None) -> None:
        self.queue, self.summary_interval, self.explain = queue, summary_interval, explain
        self.token = uuid.uuid4().hex  # this run of the task: a rerun after a worker died sends another
        self.loop: CameraLoop | None = None
        self.rows: list[Row] = []
        self.sent_counts = dict(explain.counts) if explain is not None else {}
        self.worst_keys: dict[str, tuple] = {}
        self.last_sent = self.last_worst = 0.0

    def add(self, rows: list[Row]) -> None:
        self.rows += rows

    def flush(self, final: bool = False) -> None:
        """Send what is due: rows (at most every ROWS_S), health (at least every HEALTH_S), changed worst frames
        (at most every summary interval); everything when final."""
        now = time.monotonic()
        if not final and not (self.rows and now - self.last_sent >= ROWS_S) and now - self.last_sent < HEALTH_S:
            return
        assert self.loop is not None
        worst: dict[str, list] = {}
        if final or now - self.last_worst >= self.summary_interval:
            self.last_worst = now
            for cam, frames in self.loop.worst().items():
                key = tuple((i, p) for p, i, *_ in frames)
                if self.worst_keys.get(cam) != key:
                    self.worst_keys[cam], worst[cam] = key, frames
        counts = dict(self.explain.counts) if self.explain is not None else {}
        message = {"token": self.token, "rows": self.rows, "health": self.loop.health(), "worst": worst,
                   "explain": {k: n - self.sent_counts.get(k, 0) for k, n in counts.items()}}
        self.queue.put(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        self.rows, self.sent_counts, self.last_sent = [], counts, now


def watch_group(sources: list[Source], stop: StopFlag, spec: str, options: WatchOptions, threshold: float,
                explain: Explainer | None, queue_name: str, started_unix: float) -> str:
    """A Dask task: watch `sources` with this worker's model until `stop` is set or they all end (the watching
    process keeps time: no --duration here); returns why it ended. Stream timestamps count from `started_unix`,
    the watch's start (this machine's clock; NTP keeps machines within milliseconds)."""
    model = worker_model(spec)
    outbox = Outbox(Queue(queue_name), options.summary_interval, explain)
    halt = threading.Event()
    loop = CameraLoop(sources, model, dataclasses.replace(options, duration=None), threshold, WatchMetrics(), halt,
                      outbox.add, explain, echo=False,  # its metrics stay here unserved: the health goes back
                      started=time.monotonic() - (time.time() - started_unix))
    outbox.loop = loop

    def tick() -> str | None:
        if stop():
            return "stopped"
        outbox.flush()
        return None

    try:
        loop.start()
        reason = loop.run(tick)
    except BaseException:
        loop.stop_readers()
        raise
    loop.finish()
    outbox.flush(final=True)
    return reason


# ---------------------------------------------------------------- in the watching process

class RemoteCameras:
    """The watching process's view of cameras watched on workers: their health and worst frames as the last
    message said (the counters of a task that ran before its worker died added in), kept in step with the metrics;
    new read errors are said on this process's stderr."""

    def __init__(self, sources: list[Source], record: WatchRecord, metrics: WatchMetrics) -> None:
        self.record, self.metrics = record, metrics
        self.health = {s.camera: CameraHealth().snapshot() for s in sources}
        self.worst: dict[str, list] = {s.camera: [] for s in sources}
        self.token: dict[str, str | None] = {s.camera: None for s in sources}
        self.base = {s.camera: dict.fromkeys(COUNTERS, 0) for s in sources}  # earlier tasks' counters
        self.current = {s.camera: dict.fromkeys(COUNTERS, 0) for s in sources}  # this task's
        self.next_index = {s.camera: 0 for s in sources}
        self.shift: dict[str, int] = {}  # added to a rerun stream's frame numbers

    def _set(self, cam: str, health: dict[str, Any], errors: list[str]) -> None:
        for message in errors:
            say(cam, message)
        health["errors"] = (self.health[cam]["errors"] + errors)[-RECENT_ERRORS:]
        self.metrics.follow(cam, health, self.health[cam])
        self.health[cam] = health

    def _rerun(self, cam: str) -> None:
        """Dask ran a camera's task again (its worker died): its counters so far kept, a stream's frame numbers
        go on from the last one logged (a file starts again from its first frame)."""
        self.base[cam] = {k: self.base[cam][k] + self.current[cam][k] for k in COUNTERS}
        self.base[cam]["read_errors"] += 1
        self.current[cam] = dict.fromkeys(COUNTERS, 0)
        if isinstance(self.record.sources[cam], StreamSource):
            self.shift[cam] = self.next_index[cam]

    def apply(self, message: dict[str, Any]) -> None:
        """A task's message: rows recorded and logged, health and worst frames taken, explain counts added."""
        rerun = [cam for cam in message["health"] if self.token[cam] not in (None, message["token"])]
        for cam in message["health"]:
            if cam in rerun:
                self._rerun(cam)
            self.token[cam] = message["token"]
        for row in message["rows"]:
            row["frame_index"] += self.shift.get(row["camera"], 0)
            self.next_index[row["camera"]] = row["frame_index"] + 1
        self.record.record(message["rows"])
        for cam, snapshot in message["health"].items():
            errors = ["its Dask worker died; watched again on another worker"] if cam in rerun else []
            new = snapshot["read_errors"] - self.current[cam]["read_errors"]
            errors += snapshot["errors"][-new:] if new > 0 else []
            self.current[cam] = {k: snapshot[k] for k in COUNTERS}
            self._set(cam, {**snapshot, **{k: self.base[cam][k] + snapshot[k] for k in COUNTERS}}, errors)
        self.worst.update(message["worst"])
        if self.record.explain is not None:
            self.record.explain.add_counts(message["explain"])

    def lost(self, cameras: list[str], why: str) -> None:
        """Cameras whose task ended without finishing (its workers died): down, finished, one error each."""
        for cam in cameras:
            h = self.health[cam]
            self._set(cam, {**h, "up": False, "finished": True, "read_errors": h["read_errors"] + 1}, [why])


def worker_slots(client: Any) -> list[str]:
    """One entry per worker thread of the cluster: each runs one camera group."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return [address for address, w in workers.items() for _ in range(w["nthreads"])]


def camera_groups(sources: list[Source], slots: int) -> list[list[Source]]:
    """Cameras dealt round robin into at most `slots` groups (no empty group)."""
    n = max(1, min(len(sources), slots))
    return [sources[i::n] for i in range(n)]


def check_sharded_options(options: WatchOptions) -> None:
    """What a sharded watch cannot do, as a one-line RsdetectError (the command line checks it before the model)."""
    if options.keep_flagged:  # the frames would be saved where the workers run, and counted there
        raise RsdetectError("--keep-flagged saves frames from the watching process: not with --workers/--scheduler")


def run_sharded_watch(client: Any, spec: str, sources: list[Source], model: LoadedModel, out_dir: str | Path,
                      options: WatchOptions, metrics: WatchMetrics, lock: OutputLock | None = None,
                      explain: Explainer | None = None) -> WatchResult:
    """run_watch with the cameras on `client`'s workers, each loading the model `spec` (`model`: as
    shard.describe_model describes it); the same reports and metrics, written here."""
    check_sharded_options(options)
    with watch_session(out_dir, options, lock) as (reports, stop, said):
        record = WatchRecord(sources, model, reports, options, metrics, explain)
        remote = RemoteCameras(sources, record, metrics)
        token = uuid.uuid4().hex[:12]
        flag = StopFlag(f"watch-stop-{token}")
        queue = Queue(f"watch-{token}", client=client)
        slots = worker_slots(client)
        groups = camera_groups(sources, len(slots))
        # Each group pinned to its own worker thread (a long-lived task queued behind another would never run);
        # loosely, so that Dask can rerun it elsewhere when that worker dies.
        futures = [client.submit(watch_group, group, flag, spec, options, record.threshold, explain, queue.name,
                                 record.started_unix, key=f"watch-{i}-{token}", pure=False, workers=[slot],
                                 allow_other_workers=True)
                   for i, (group, slot) in enumerate(zip(groups, slots, strict=False))]
        settled: set[int] = set()

        def drain() -> bool:
            """Apply the waiting messages, then take note of tasks that ended; True if there were messages."""
            messages = queue.get(batch=True)
            for data in messages:
                remote.apply(pickle.loads(data))
            for i, future in enumerate(futures):
                if i in settled or not future.done():
                    continue
                settled.add(i)
                if future.status == "error" and not isinstance(future.exception(), KilledWorker):
                    future.result()  # a model error: raised here, as in a single-process watch
                if future.status != "finished":
                    remote.lost([s.camera for s in groups[i]], f"its Dask worker died ({future.status})")
            return bool(messages)

        def follow() -> str:
            while True:
                if stop.is_set():
                    return said[0] if said else "stopped"
                if record.expired():
                    return "duration"
                if record.due():
                    record.write_summary(None, remote.health, remote.worst)
                ended = all(f.done() for f in futures)  # read before draining: nothing can follow it
                if not drain():
                    if ended:
                        return record.ended()
                    time.sleep(POLL_S)

        try:
            record.write_summary(None, remote.health, remote.worst, chart=False)
            stopped_by = follow()
            Event(flag.name, client).set()  # the tasks score what their readers hold, send it and end
            deadline = time.monotonic() + STOP_WAIT_S
            while not all(f.done() for f in futures) and time.monotonic() < deadline:
                if not drain():
                    time.sleep(POLL_S)
            drain()
            late = [i for i, f in enumerate(futures) if not f.done()]
            remote.lost([s.camera for i in late for s in groups[i]], f"did not stop within {STOP_WAIT_S:.0f} s")
            summary = record.write_summary(stopped_by, remote.health, remote.worst)
        finally:
            with contextlib.suppress(Exception):  # the cluster may be what failed; the original error matters
                Event(flag.name, client).set()
                client.cancel([f for f in futures if not f.done()])
                queue.close()
    return WatchResult(reports.folder, summary, 0, stopped_by)
