"""The kinds of source `scan` reads: image files, folders and globs, video files, stream URLs, and sources
that do not exist (reported as failures, not usage errors).

Each kind is one class: how a spec is recognised (`claim`), how many frames it will yield, how its frames are
read, and what a report row names as its source. `KINDS` lists them in the order they are tried, so a new kind
of source is one new class added there.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar
from urllib.parse import urlparse

import cv2
import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.io import read_yaml
from rsdetect.limits import ImageSizeError, check_size
from rsdetect.preprocess import decode
from rsdetect.video.sensor import Sensor, check_sensor  # re-exported: where sources are named, sensors are given

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
STREAM_TIMEOUT_MS = 10_000  # a dead or stalled stream must end, not hang the scan
FRAME_COUNT_SLACK = 1  # containers may over-report their frame count by one
# ... and by more: an AVI's header counts frames its index never held (a real 50 fps AVI claims 750 frames and
# decodes 748, 0.3% short). A video file up to this fraction short of its claim is whole: the shortfall is counted
# and noted, not a failure. Beyond it (a copy cut off mid-way loses its index and most frames) it ended early.
FRAME_COUNT_SHORT_FRACTION = 0.01

FrameItem = tuple[int, float | None, np.ndarray]  # (frame_index, timestamp_s or None, RGB uint8 frame)
OnError = Callable[[str], None]  # reports a frame-level failure; the source goes on
OnNote = Callable[[str], None]  # reports something counted that is not a failure (a video a few frames short)
T = TypeVar("T")


class SourceError(RsdetectError):
    """A source that cannot be read (or ends early): reported and counted; the other sources go on."""


def is_url(spec: str) -> bool:
    """True for stream URLs (rtsp://, http://, ...) that go straight to cv2.VideoCapture."""
    return urlparse(spec).scheme.lower() in STREAM_SCHEMES


def redact(spec: str) -> str:
    """A source as shown in reports and messages: a stream URL's password replaced by ***."""
    parsed = urlparse(spec) if is_url(spec) else None
    if parsed is None or parsed.password is None:
        return spec
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)).geturl()


class Sampler:
    """Which frames to score: every Nth frame, or about F per second of video time (bucketed by timestamp)."""

    def __init__(self, every: int = 1, fps: float | None = None) -> None:
        self.every, self.fps, self._last_bucket = every, fps, -1

    def keep(self, index: int, timestamp: float | None) -> bool:
        """True if this frame is to be scored (call once per frame, in order)."""
        if self.fps is None or timestamp is None:
            return index % self.every == 0
        bucket = math.floor(timestamp * self.fps + 1e-6)  # epsilon: i/V*F lands on integers
        if bucket > self._last_bucket:
            self._last_bucket = bucket
            return True
        return False


# ---------------------------------------------------------------- kinds



@dataclass(frozen=True)
class Source:
    """One camera's input. Subclasses are the kinds; `kind` is the name reports use. `readout_ms` and `shutter` are
    what the user knows of the camera's sensor (None: not told; the video evidence estimates the readout)."""

    camera: str
    spec: str
    # Keyword-only: the kinds' own fields (ImageSource.paths) keep their place after camera and spec.
    readout_ms: float | None = dataclasses.field(default=None, kw_only=True)
    shutter: str | None = dataclasses.field(default=None, kw_only=True)
    kind: ClassVar[str] = ""
    annotatable: ClassVar[bool] = False  # can be re-read frame by frame to draw scores on (--annotate)

    @classmethod
    def claim(cls, camera: str, spec: str) -> Source | None:
        """This kind's Source for `spec`, or None if the spec is not of this kind."""
        raise NotImplementedError

    def count(self, every: int, fps: float | None) -> int | None:
        """How many frames the whole source will yield when sampled, or None if unknown."""
        return None

    def estimate_frames(self, every: int, fps: float | None, max_frames: int | None) -> int | None:
        """How many frames will be scored (for the progress bar), or None if unknown."""
        n = self.count(every, fps)
        if max_frames is not None:
            return max_frames if n is None else min(n, max_frames)
        return n

    def frames(self, on_error: OnError, every: int = 1, fps: float | None = None,
               max_frames: int | None = None, on_note: OnNote | None = None) -> Iterator[FrameItem]:
        """Sampled frames in order; SourceError (raised on first use at the latest) ends the source. `on_error`
        counts a failure and the source goes on; `on_note` (default: a line on stderr) counts what is not one,
        such as a video a few frames short of its container's claim."""
        raise NotImplementedError

    def frame_source(self, frame_index: int) -> str:
        """What a report row names as the origin of a frame."""
        return self.shown

    @functools.cached_property
    def shown(self) -> str:
        """The spec as reports show it (redacted): once, not per frame row (urlparse: ~6 us a row)."""
        return redact(self.spec)


@dataclass(frozen=True)
class StreamSource(Source):
    """A stream URL (rtsp://, http://, ...): no known length; may end early or never."""

    kind: ClassVar[str] = "stream"

    @classmethod
    def claim(cls, camera: str, spec: str) -> Source | None:
        return cls(camera, spec) if is_url(spec) else None

    def frames(self, on_error: OnError, every: int = 1, fps: float | None = None,
               max_frames: int | None = None, on_note: OnNote | None = None) -> Iterator[FrameItem]:
        return video_frames(self.spec, every, fps, max_frames, on_note=on_note)


@dataclass(frozen=True)
class ImageSource(Source):
    """Image files: one file, a folder's images or a glob's, in name order; frame_index = position."""

    paths: tuple[str, ...] = ()
    kind: ClassVar[str] = "images"

    @classmethod
    def claim(cls, camera: str, spec: str) -> Source | None:
        path = Path(spec)
        if path.is_dir():
            try:
                files = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            except OSError as exc:  # an unreadable folder fails its camera when scanned, not the whole command
                return UnreadableSource(camera, spec, f"cannot list folder ({exc.strerror or type(exc).__name__})")
            return cls(camera, spec, tuple(files))
        if path.is_file():
            return cls(camera, spec, (spec,)) if path.suffix.lower() in IMAGE_EXTS else None
        if glob.has_magic(spec):
            files = sorted(p for p in glob.glob(spec) if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTS)
            return cls(camera, spec, tuple(files))
        return None

    def count(self, every: int, fps: float | None) -> int | None:
        return math.ceil(len(self.paths) / every)

    def frames(self, on_error: OnError, every: int = 1, fps: float | None = None,
               max_frames: int | None = None, on_note: OnNote | None = None) -> Iterator[FrameItem]:
        if not self.paths:
            raise SourceError(f"{self.spec}: no image files found")
        yield from image_frames(self.paths, on_error, every, max_frames)

    def frame_source(self, frame_index: int) -> str:
        return self.paths[frame_index]


@dataclass(frozen=True)
class VideoSource(Source):
    """A video file: its frame count (when the container knows it) checks that it was read to the end."""

    kind: ClassVar[str] = "video"
    annotatable: ClassVar[bool] = True

    @classmethod
    def claim(cls, camera: str, spec: str) -> Source | None:
        return cls(camera, spec) if Path(spec).is_file() else None

    def count(self, every: int, fps: float | None) -> int | None:
        cap = cv2.VideoCapture(self.spec)
        native, total = video_meta(cap) if cap.isOpened() else (0.0, None)
        cap.release()
        if total is None:
            return None
        if fps is not None and native:
            return math.ceil(total / native * min(fps, native))
        return math.ceil(total / every)

    def frames(self, on_error: OnError, every: int = 1, fps: float | None = None,
               max_frames: int | None = None, on_note: OnNote | None = None) -> Iterator[FrameItem]:
        return video_frames(self.spec, every, fps, max_frames, on_note=on_note)


@dataclass(frozen=True)
class UnreadableSource(Source):
    """A folder that exists but cannot be listed (no permission): a failure of that camera when scanned. Never
    claims a spec itself: ImageSource hands it out when listing fails."""

    reason: str = ""
    kind: ClassVar[str] = "unreadable"

    @classmethod
    def claim(cls, camera: str, spec: str) -> Source | None:
        return None

    def frames(self, on_error: OnError, every: int = 1, fps: float | None = None,
               max_frames: int | None = None, on_note: OnNote | None = None) -> Iterator[FrameItem]:
        raise SourceError(f"{self.spec}: {self.reason}")
        yield  # pragma: no cover  (a generator: the error comes on first use, inside the scan)


@dataclass(frozen=True)
class MissingSource(Source):
    """A path that does not exist: a failure of that camera when scanned, not a usage error."""

    kind: ClassVar[str] = "missing"

    @classmethod
    def claim(cls, camera: str, spec: str) -> Source | None:
        return cls(camera, spec)

    def frames(self, on_error: OnError, every: int = 1, fps: float | None = None,
               max_frames: int | None = None, on_note: OnNote | None = None) -> Iterator[FrameItem]:
        raise SourceError(f"{self.spec}: no such file, folder or matching glob")
        yield  # pragma: no cover  (makes this a generator: the error comes on first use, inside the scan)


KINDS: tuple[type[Source], ...] = (StreamSource, ImageSource, VideoSource, MissingSource)  # tried in this order


def resolve_source(camera: str, spec: str) -> Source:
    """The Source of the first kind in KINDS that claims `spec` (MissingSource claims anything)."""
    for kind in KINDS:
        source = kind.claim(camera, spec)
        if source is not None:
            return source
    raise AssertionError("MissingSource claims every spec")  # pragma: no cover


# ---------------------------------------------------------------- reading frames

def image_frames(paths: tuple[str, ...] | list[str], on_error: OnError, every: int = 1,
                 max_frames: int | None = None) -> Iterator[FrameItem]:
    """Decode images in order (frame_index = position in `paths`); a corrupt one is reported via on_error and
    skipped."""
    kept = 0
    for index, path in enumerate(paths):
        if index % every or (max_frames is not None and kept >= max_frames):
            continue
        try:
            rgb = decode(path)  # the decoder training and the registered model use: same bytes, same pixels
        except RsdetectError as exc:
            on_error(str(exc))
            continue
        kept += 1
        yield index, None, rgb


def open_capture(spec: str, timeout_ms: int = STREAM_TIMEOUT_MS) -> cv2.VideoCapture:
    """cv2.VideoCapture on a file or stream URL (URLs with open/read timeouts of `timeout_ms`: a stream that sends
    nothing for that long ends); SourceError if it does not open."""
    if is_url(spec):
        cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
    elif not Path(spec).is_file():
        raise SourceError(f"{spec}: no such file")
    else:
        cap = cv2.VideoCapture(spec)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{redact(spec)}: cannot open (unreachable stream, not a video, or unsupported codec)")
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        if width > 0 and height > 0:  # 0 where a stream does not say before its first frame
            check_size(width, height)
    except ImageSizeError as exc:
        cap.release()
        raise SourceError(f"{redact(spec)}: frames {exc}") from None
    return cap


def video_meta(cap: cv2.VideoCapture) -> tuple[float, int | None]:
    """(native fps or 0 if unknown, frame count or None if unknown, e.g. live streams)."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    return (fps if 0 < fps < 1000 else 0.0), (count if count > 0 else None)


def video_frames(spec: str, every: int = 1, fps: float | None = None, max_frames: int | None = None,
                 timeout_ms: int = STREAM_TIMEOUT_MS, on_note: OnNote | None = None,
                 bgr: bool = False) -> Iterator[FrameItem]:
    """Sampled frames of a video file or stream (RGB; `bgr`: as OpenCV decodes them, for a caller that converts
    only what it keeps); SourceError if it does not open, yields nothing, or ends early.
    A stream silent for `timeout_ms` ends like one that closed. A file a few frames short of its container's
    claim (within FRAME_COUNT_SHORT_FRACTION) is whole: the shortfall goes to `on_note` as one line (default:
    stderr), not a failure."""
    cap = open_capture(spec, timeout_ms)
    try:
        native, total = video_meta(cap)
        sampler, start = Sampler(every, fps), time.monotonic()
        index, kept, exhausted, first_pos = -1, 0, False, 0.0
        while max_frames is None or kept < max_frames:
            if not cap.grab():  # grab without decoding: skipped frames cost no JPEG/H.264 decode
                exhausted = True
                break
            index += 1
            if native and index <= 1 and not is_url(spec):
                pos = cap.get(cv2.CAP_PROP_POS_MSEC)
                if index == 0:
                    first_pos = pos
                else:
                    native, total = frame_rate_check(spec, native, total, (pos - first_pos) / 1000, on_note)
            if native:
                ts = index / native
            else:  # live streams: the container clock if it has one, else wall time
                ts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000 or time.monotonic() - start
            if not sampler.keep(index, ts):
                continue
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                raise SourceError(f"{redact(spec)}: cannot decode frame {index}")
            kept += 1
            yield index, ts, frame if bgr else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if not exhausted:
            return
        if index < 0:
            raise SourceError(f"{redact(spec)}: no frames could be read")
        if total is not None and index + 1 < total - FRAME_COUNT_SLACK:
            short = total - (index + 1)
            if is_url(spec) or short > total * FRAME_COUNT_SHORT_FRACTION:
                raise SourceError(f"{redact(spec)}: ended early after {index + 1} of {total} frames")
            (on_note or note_to_stderr)(f"{redact(spec)}: {index + 1} frames decoded of the {total} its container "
                                         f"claims ({short} short; counted, not a failure)")
        if total is None and is_url(spec) and max_frames is not None and kept < max_frames:
            raise SourceError(f"{redact(spec)}: stream ended after {kept} of --max-frames {max_frames} scored frames")
    finally:
        cap.release()


# A container's frame rate that its own time stamps contradict by more than this is the time stamps' (a real AVI
# claims 50 fps and 682 frames; its frames are 40 ms apart and 341 decode, to the end of its 13.6 s).
FRAME_RATE_TOLERANCE = 0.25


def frame_rate_check(spec: str, native: float, total: int | None, period: float,
                     on_note: OnNote | None) -> tuple[float, int | None]:
    """(frame rate, frame count) of a video file whose first two frames are `period` s apart by its time stamps:
    the container's own where they agree, else the time stamps' (the count scaled to the same duration), noted."""
    if not period > 0 or abs(period * native - 1) <= FRAME_RATE_TOLERANCE:
        return native, total
    actual = 1 / period
    count = None if total is None else round(total * actual / native)
    (on_note or note_to_stderr)(f"{redact(spec)}: its container says {native:g} frames/s"
                                f"{'' if total is None else f' and {total} frames'}, its time stamps {actual:g} "
                                f"frames/s: read at {actual:g} frames/s"
                                + ("" if count is None else f", {count} frames"))
    return actual, count


def note_to_stderr(message: str) -> None:
    """Where a note goes when the caller keeps no count: one line on stderr."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def read_ahead(frames: Iterable[T], batch: int) -> Generator[list[T], None, None]:
    """Lists of up to `batch` frames; the next list is read in a thread while the caller scores this one.

    OpenCV releases the GIL while it decodes, so decoding overlaps the model. With the TFLite scorer's interpreter
    per core, scan's CPU per 640x480 mp4v frame fell from 6.4-7.8 to 5.3-6.4 ms (bench_scan.py, same shell, 2
    shared cores at load 5-7: wall times there mean little). A SourceError ends the batches after the frames read
    before it, as if unbatched.
    Close it before `frames` (contextlib.closing): that stops the reader after its current frame."""
    frames, stop = iter(frames), threading.Event()

    def take() -> tuple[list[T], SourceError | None]:
        chunk: list[T] = []
        try:
            while len(chunk) < batch and not stop.is_set():
                chunk.append(next(frames))
        except StopIteration:
            pass
        except SourceError as exc:
            return chunk, exc
        return chunk, None

    pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
    try:
        pending = pool.submit(take)
        while True:
            chunk, error = pending.result()
            if error is None and len(chunk) == batch:
                pending = pool.submit(take)
            if chunk:
                yield chunk
            if error is not None:
                raise error
            if len(chunk) < batch:
                return
    finally:
        stop.set()
        pool.shutdown(wait=True)  # the reader finishes its frame: `frames` is not running when the caller closes it


# ---------------------------------------------------------------- naming sources

def default_camera_name(spec: str) -> str:
    """A camera name from a source: file stem, folder name, a glob's folder, or a URL's last path part."""
    if is_url(spec):
        parsed = urlparse(spec)
        return Path(parsed.path).stem or parsed.hostname or "stream"
    path = Path(spec)
    if path.is_dir():
        return path.resolve().name
    if glob.has_magic(spec):
        parent = Path(spec).parent
        while glob.has_magic(str(parent)):
            parent = parent.parent
        return parent.resolve().name or "images"
    return path.stem or "camera"


def _split_named(arg: str) -> tuple[str | None, str]:
    """'cam1=path' -> ('cam1', 'path'); URLs with '=' in the query and existing paths stay unnamed."""
    name, sep, rest = arg.partition("=")
    if sep and rest and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and not Path(arg).exists():
        return name, rest
    return None, arg


CAMERA_KEYS = ("source", "readout_ms", "shutter")


def read_cameras_yaml(path: str | os.PathLike) -> list[tuple[str, str, Sensor]]:
    """(name, source, sensor) from a YAML file {cameras: {name: source}}, where a camera may also be a mapping
    {source: ..., readout_ms: 18} or {source: ..., shutter: global}."""
    path = Path(path)
    raw = read_yaml(path, "cameras file", RsdetectError)
    cams = raw.get("cameras") if isinstance(raw, dict) else None
    if not isinstance(cams, dict) or not cams:
        raise RsdetectError(f"{path}: expected a mapping 'cameras: {{name: source}}'")
    base = path.resolve().parent
    entries = []
    for name, entry in cams.items():
        where = f"{path}: camera {name!r}"
        if isinstance(entry, dict):
            unknown = sorted(map(str, set(entry) - set(CAMERA_KEYS)))
            if unknown:
                raise RsdetectError(f"{where}: unknown key {unknown[0]!r} (a camera has {', '.join(CAMERA_KEYS)})")
            spec, sensor = entry.get("source"), check_sensor(entry.get("readout_ms"), entry.get("shutter"), where)
        else:
            spec, sensor = entry, Sensor()
        if not isinstance(spec, str) or not spec:
            raise RsdetectError(f"{where} needs a source string")
        # Relative paths are relative to the YAML file, so a cameras file can travel with its footage.
        if not is_url(spec) and not Path(spec).is_absolute():
            spec = str(base / spec)
        entries.append((str(name), spec, sensor))
    return entries


NOT_TOLD = Sensor()  # nothing known of the sensor: its readout is estimated from the footage, or unknown


def parse_sources(args: list[str], cameras_yaml: str | None = None, sensor: Sensor = NOT_TOLD) -> list[Source]:
    """Sources from CLI args (optionally name=source; `sensor`, from --readout-ms / --shutter, applies to them) and
    a cameras YAML (each camera's own); unnamed ones get unique stem names."""
    named: list[tuple[str | None, str, Sensor]] = [(*_split_named(a), sensor) for a in args]
    if cameras_yaml:
        named += read_cameras_yaml(cameras_yaml)
    if not named:
        raise RsdetectError("no sources: give image/video paths, folders, globs, stream URLs or --cameras FILE")
    explicit = [n for n, _, _ in named if n is not None]
    dupes = sorted({n for n in explicit if explicit.count(n) > 1})
    if dupes:
        raise RsdetectError(f"camera name {dupes[0]!r} is used twice")
    taken = set(explicit)
    sources = []
    for name, spec, known in named:
        if name is None:
            stem, n = default_camera_name(spec), 1
            name = stem
            while name in taken:
                n += 1
                name = f"{stem}-{n}"
            taken.add(name)
        sources.append(dataclasses.replace(resolve_source(name, spec), readout_ms=known.readout_ms,
                                           shutter=known.shutter))
    return sources
