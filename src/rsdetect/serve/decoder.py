"""Each camera's frames decoded in a process of its own, so that a crash in native decoder code costs only that camera.

Why: a real AVI from a public dataset makes OpenCV's decoder corrupt the heap (`malloc_consolidate(): invalid chunk
size`, SIGABRT). Decoded in the scanning process, that one file killed every camera of a scan and crash-looped a
watch. Here the decoder process dies instead; its camera gets one line naming the signal (a SourceError: `scan`
counts the camera failed and exits 3, `watch` marks it down and reconnects a stream with backoff), the others go on.
It also moves decoding onto the second core.

The decoder process reads `Source.frames` (the very code an in-process read runs) and writes each frame into a ring of
SLOTS shared-memory slots, announcing it over a pipe; the reader copies it out and hands the slot back. The slots
are the back-pressure: the decoder runs at most SLOTS frames ahead of its reader. Processes come from a forkserver
that has imported only this module's needs (no TensorFlow, no threads), so each camera's process starts in milliseconds.

Where the caller is itself a daemonic process (a Dask worker: `--workers`), Python allows it no children; there the
frames are read in-process, and the worker process is the isolation (a dead worker costs its cameras only).
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from rsdetect import limits
from rsdetect.config import VideoAnalysisParams
from rsdetect.serve.sources import (
    OnError,
    OnNote,
    Source,
    SourceError,
    StreamSource,
    VideoSource,
    note_to_stderr,
    read_ahead,
    redact,
    video_frames,
)
from rsdetect.video.stream import Evidence, analysed_frames

CONTEXT = "forkserver"
# Imported once by the forkserver: OpenCV, numpy, scipy and the motion measurement, not TensorFlow.
PRELOAD = ["rsdetect.serve.sources", "rsdetect.video.stream"]
JOIN_S = 2.0  # how long a finished decoder may take to exit before it is killed
STOP_S = 0.5  # how long a decoder asked to stop may take (one frame's decoding and measuring) before it is killed
# Frames in flight between a decoder and its reader. Through a pipe a 1280x720 frame cost more than decoding it
# (94-137 against 230-340 frames/s decode-only, 2 loaded cores); through shared memory it is two copies. Three
# let the decoder work a frame ahead while the reader's read-ahead holds one and copies one.
SLOTS = 3
READ_AHEAD = 4  # frames decoded ahead of the motion measurement, in a thread (source_frames)
# Frames whose evidence crosses alone (no pixels: ReadRequest.worst) go this many to a message: one message a frame
# cost each side a pickle and a system call, ~0.05 ms, as much as a static 320x240 frame's whole measurement
# (bench_footage). They wait for at most the analyzer's next batch of rows (lag_frames): no more than it lags anyway.
EVIDENCE_BATCH = 8


@dataclass(frozen=True)
class ReadRequest:
    """What to read: sampling as the caller's options say; `timeout_ms` for streams (their stall timeout);
    `analysis`: measure each video frame's motion and rolling-shutter evidence (rsdetect.video) where it is decoded."""

    every: int = 1
    fps: float | None = None
    max_frames: int | None = None
    timeout_ms: int | None = None
    analysis: VideoAnalysisParams | None = None
    # The worst frames the reader keeps per camera: with analysis, only frames that can be among them cross to the
    # reader with their pixels (and a measured de-skew preview); the others' evidence comes alone (video/stream.py)
    worst: int = 0
    # K > 0: frames flagged at the scorer's K-frame smoothing (the caller's --smooth) cross with their pixels too, to
    # be saved (watch --keep-flagged); 0: they do not
    flag_smooth: int = 0
    max_pixels: int = dataclasses.field(default_factory=limits.max_pixels)  # this process's decode limit, handed on


# a frame and its evidence (None: a still); pixels None: a video frame whose evidence alone crosses (ReadRequest.worst)
Decoded = tuple[int, float | None, np.ndarray | None, Evidence | None]
OnReadout = Callable[[dict[str, Any]], None]  # hears a camera's readout {ms, ci_ms, source, evidence_frames}


def source_frames(source: Source, on_error: OnError, request: ReadRequest, on_note: OnNote | None = None,
                  on_readout: OnReadout | None = None) -> Iterator[Decoded]:
    """The frames of `source` as this process reads them (Source.frames, or for a stream with a stall timeout,
    video_frames with that timeout), each with its video evidence where `request.analysis` asks for it."""
    measured = request.analysis is not None and source.kind != "images"
    # Measured, a video's frames stay BGR until one is kept (video/stream.py: most never leave this process)
    bgr = measured and isinstance(source, (VideoSource, StreamSource))
    if isinstance(source, StreamSource) and request.timeout_ms is not None:
        frames = video_frames(source.spec, request.every, request.fps, request.max_frames,
                              timeout_ms=request.timeout_ms, on_note=on_note, bgr=bgr)
    elif bgr:
        frames = video_frames(source.spec, request.every, request.fps, request.max_frames, on_note=on_note, bgr=True)
    else:
        frames = source.frames(on_error, request.every, request.fps, request.max_frames, on_note=on_note)
    if not measured:
        return ((index, ts, rgb, None) for index, ts, rgb in frames)
    assert request.analysis is not None
    # Decoding the next frames in a thread while this one measures motion: OpenCV releases the GIL in both, so the
    # two overlap on the second core (bench_footage.py)
    frames = (frame for chunk in read_ahead(frames, READ_AHEAD) for frame in chunk)
    return analysed_frames(frames, request.analysis, source.readout_ms, source.shutter, on_readout or (lambda _: None),
                           request.worst, request.flag_smooth, bgr)


STOP = None  # the reader's word for "no more frames" (slots handed back are ints)


class _Stopped(Exception):
    """The reader said STOP: it wants no more frames."""


class _Ring:
    """The decoder's side of the frame ring: SLOTS frames of shared memory it writes and the reader copies out of.

    A slot is reused only once the reader has acknowledged it (it sends the slot's number back when it has copied
    the frame out), so the decoder runs at most SLOTS frames ahead. A frame larger than the slots (a stream that
    reconnects at another resolution) gets a new ring once every slot of the old one is back. A frame whose evidence
    crosses without its pixels needs no slot: such frames go EVIDENCE_BATCH to a message, before anything sent
    after them."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.slot_bytes, self.free = conn, 0, list(range(SLOTS))
        self.shm: shared_memory.SharedMemory | None = None
        # frame errors and notes come from the read-ahead thread: one message at a time, and the frames whose
        # evidence waits to go alone are taken or added under the same lock
        self.lock = threading.Lock()
        self.alone: list[tuple[int, float | None, Evidence | None]] = []

    def send(self, message: Any) -> None:
        """Send a message after the frames whose evidence waits to go alone (None: just those), keeping the order."""
        with self.lock:
            if self.alone:
                self.conn.send(("frames", self.alone))
                self.alone = []
            if message is not None:
                self.conn.send(message)

    def put(self, index: int, ts: float | None, rgb: np.ndarray | None, evidence: Evidence | None) -> None:
        if rgb is None:  # evidence alone: no slot; sent EVIDENCE_BATCH at a time (or before any other message)
            with self.lock:
                self.alone.append((index, ts, evidence))
                full = len(self.alone) >= EVIDENCE_BATCH
            if full:
                self.send(None)
                self.listen()
            return
        self.listen()
        if self.shm is None or rgb.nbytes > self.slot_bytes:
            self.drain()
            self.close()
            self.slot_bytes = rgb.nbytes
            self.shm = shared_memory.SharedMemory(create=True, size=SLOTS * rgb.nbytes)
            self.send(("ring", self.shm.name, self.slot_bytes))
        while not self.free:
            self.take_back()
        slot = self.free.pop()
        view = np.ndarray(rgb.shape, np.uint8, buffer=self.shm.buf, offset=slot * self.slot_bytes)
        view[...] = rgb
        del view  # no export of shm.buf may outlive this call: close() needs none
        self.send(("frame", slot, index, ts, rgb.shape, evidence))

    def listen(self) -> None:
        """Take back the slots handed back so far; _Stopped if the reader said STOP."""
        while self.conn.poll():
            self.take_back()

    def take_back(self) -> None:
        """Wait for the reader's next word: a slot it has copied out, or STOP."""
        slot = self.conn.recv()
        if slot is STOP:
            raise _Stopped
        self.free.append(slot)

    def drain(self) -> None:
        """Wait until the reader has copied out every frame sent (then the ring can go)."""
        while len(self.free) < SLOTS:
            self.take_back()

    def close(self) -> None:
        if self.shm is not None:
            self.shm.close()
            self.shm.unlink()
            self.shm = None


def _decode(conn: Connection, source: Source, request: ReadRequest) -> None:
    """The decoder process: frames (through a _Ring), frame-level errors and how the source ended, in order."""
    # Ctrl-C reaches the whole process group and systemd's SIGTERM the whole unit: the reader decides when this
    # process ends (it kills it on close), so a signal must not make it die first and look like a decoder crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    limits.set_max_pixels(request.max_pixels)  # a fresh process: the reader's limit, not the default
    ring = _Ring(conn)
    send = ring.send
    with contextlib.suppress(BrokenPipeError, EOFError, OSError):  # the reader went away: nothing left to tell
        try:
            for index, ts, rgb, evidence in source_frames(
                    source, lambda message: send(("error", message)), request,
                    lambda message: send(("note", message)), lambda readout: send(("readout", readout))):
                ring.put(index, ts, rgb, evidence)
            send(("end",))
        except _Stopped:  # no "end": the reader is gone; its copies need no slot, the ring can go now
            ring.free = list(range(SLOTS))
        except SourceError as exc:
            send(("fail", str(exc)))
        except Exception as exc:  # noqa: BLE001  (cv2.error and kin: this camera's failure, said in one line)
            send(("fail", f"{redact(source.spec)}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"))
        with contextlib.suppress(_Stopped):  # the reader stopped before it read the end: nothing more comes back
            ring.drain()  # the reader attaches to a ring when it reads its announcement: keep it until then
    ring.close()
    conn.close()


class _Reader:
    """The reader's side of the ring: attaches to each ring the decoder announces, copies frames out and hands the
    slots back; owns the unlinking of a ring whose decoder died (it cannot)."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.slot_bytes = conn, 0
        self.shm: shared_memory.SharedMemory | None = None

    def attach(self, name: str, slot_bytes: int) -> None:
        self.detach(unlink=False)
        self.shm = shared_memory.SharedMemory(name=name)
        self.slot_bytes = slot_bytes

    def take(self, slot: int | None, shape: tuple[int, ...]) -> np.ndarray | None:
        if slot is None:  # a frame whose evidence came alone
            return None
        assert self.shm is not None, "frame before ring"
        rgb = np.ndarray(shape, np.uint8, buffer=self.shm.buf, offset=slot * self.slot_bytes).copy()
        with contextlib.suppress(ConnectionError):  # a dead decoder needs no slot back: its death shows at recv
            self.conn.send(slot)
        return rgb

    def detach(self, unlink: bool) -> None:
        if self.shm is not None:
            self.shm.close()
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    self.shm.unlink()
            self.shm = None


def death_message(source: Source, exitcode: int | None) -> str:
    """One line for a decoder process that ended without saying how the source ended."""
    if exitcode is not None and exitcode < 0:
        how = f"was killed by {signal.Signals(-exitcode).name}"
    else:
        how = f"exited with code {exitcode}"
    return f"{redact(source.spec)}: the decoder process {how} (a crash in native decoding code); this camera stops"


def stop_decoder(conn: Connection, process: Any, reader: _Reader) -> None:
    """Send STOP and read what the decoder still sends (attaching any ring it announces) until it exits or
    STOP_S passes."""
    deadline = time.monotonic() + STOP_S
    with contextlib.suppress(EOFError, OSError):  # it exited (EOF) or already died
        conn.send(STOP)
        while process.is_alive() and time.monotonic() < deadline:
            if conn.poll(0.01):
                message = conn.recv()
                if message[0] == "ring":
                    reader.attach(message[1], message[2])
    process.join(max(0.0, deadline - time.monotonic()))


def isolating() -> bool:
    """Whether decoders get processes of their own here (not inside a daemonic process such as a Dask worker)."""
    return not mp.current_process().daemon


_context: Any = None


def _ctx() -> Any:
    global _context
    if _context is None:
        _context = mp.get_context(CONTEXT)
        _context.set_forkserver_preload(PRELOAD)
    return _context


def decoded_frames(source: Source, on_error: OnError, request: ReadRequest = ReadRequest(),
                   isolate: bool | None = None, on_note: OnNote | None = None,
                   on_readout: OnReadout | None = None) -> Generator[Decoded, None, None]:
    """The frames of `source` with their evidence (source_frames), decoded in a process of its own (unless `isolate`
    is False, or not `isolating()`); `on_readout` hears the camera's readout as the decoder estimates it.

    A SourceError ends the frames as an in-process read would (after the frames read before it); a decoder process
    that dies is one too (death_message). Closing the iterator kills the decoder process."""
    if not (isolating() if isolate is None else isolate):
        limits.set_max_pixels(request.max_pixels)  # a Dask worker reads for the process that asked (ScanOptions)
        yield from source_frames(source, on_error, request, on_note, on_readout)
        return
    ctx = _ctx()
    conn, child_conn = ctx.Pipe()
    process = ctx.Process(target=_decode, args=(child_conn, source, request), daemon=True,
                          name=f"decode-{source.camera}"[:64])
    process.start()
    child_conn.close()  # the child holds the only other end: its death is EOF here
    reader, said_end = _Reader(conn), False  # said_end: the decoder said how the source ended and is exiting
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, ConnectionError):  # a socket whose peer died with our acks unread: reset, not EOF
                process.join(JOIN_S)
                raise SourceError(death_message(source, process.exitcode)) from None
            if message[0] == "frame":
                yield message[2], message[3], reader.take(message[1], message[4]), message[5]
            elif message[0] == "frames":  # evidence alone, a batch
                for index, ts, evidence in message[1]:
                    yield index, ts, None, evidence
            elif message[0] == "ring":
                reader.attach(message[1], message[2])
            elif message[0] == "error":
                on_error(message[1])
            elif message[0] == "note":
                (on_note or note_to_stderr)(message[1])
            elif message[0] == "readout":
                if on_readout is not None:
                    on_readout(message[1])
            else:
                said_end = True
                if message[0] == "fail":
                    raise SourceError(message[1])
                return  # "end"
    finally:
        if said_end:
            process.join(JOIN_S)
        elif process.is_alive():
            # Closed early (a cap, a stop): asked to stop, the decoder removes its own ring and exits. Killed
            # instead, it could die between unlinking the ring and telling Python's resource tracker, which then
            # warned of a leak at exit. Its last messages are read meanwhile (it may be waiting to send them).
            stop_decoder(conn, process, reader)
        if process.is_alive():  # stuck (a stream read that does not return): it has nothing more to give
            process.kill()
            process.join()
        # A decoder that exits normally unlinks its ring; one killed or crashed cannot. A ring it announced that
        # was never attached (killed between the two) is still named in the pipe.
        with contextlib.suppress(EOFError, OSError):
            while conn.poll():
                message = conn.recv()
                if message[0] == "ring":
                    reader.attach(message[1], message[2])
        reader.detach(unlink=not said_end or process.exitcode != 0)
        conn.close()
