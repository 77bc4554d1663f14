"""Atomic file writes (an output is either absent or complete, never half-written) and file digests.

The one home of write-to-temp-then-rename, of the umask lookup and of the md5 of a file: every module that
writes an output or fingerprints a file uses these.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

_IMPORTED = time.time()  # fallback process start where there is no /proc
_UMASK = os.umask(0)  # read once at import: os.umask can only be read by setting it, which races with threads
os.umask(_UMASK)


def default_file_mode() -> int:
    """0o666 minus the umask: the mode open() would give a new file (mkstemp's temp files are 0o600)."""
    return 0o666 & ~_UMASK


def file_md5(path: str | os.PathLike) -> str:
    """MD5 of a file, read in 1 MiB chunks (checkpoints and the COCO annotations zip are hundreds of MB)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file to write (and check, through its `.name`) that takes `path`'s name only when the block
    completes; on any exception or interrupt the temp file is removed and `path` is untouched.

    For outputs streamed in chunks (a 250 MB download) or checked before they are kept (an exported model).
    `suffix` is the temp file's ending, for readers that go by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; outputs should be as readable as any file
        os.close(fd)
        with open(tmp, "wb") as f:  # opened by path, so f.name is the temp file's path (an fdopen'ed one has the fd)
            yield f
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to a temp file beside `path`, then rename it into place."""
    with atomic_file(path) as f:
        f.write(data)


@contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder beside `path` to fill; it replaces `path` only when the block completes.

    For outputs of many files: plain writes inside (no per-file temp and rename), and an interrupted
    run (an exception, Ctrl-C) leaves the previous folder untouched and no partial one behind.

    A run killed outright (SIGKILL, power loss) cannot clean up, so each run first removes the
    `.NAME.partial.*` and `.NAME.old.*` siblings of `path` that are older than this process: they can only
    be a dead run's. This assumes one writer per output (the pipeline runs a stage once at a time);
    siblings made after this process started are left alone in case another run is alive.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial."))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.chmod(stage, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    old = stage.with_name(stage.name.replace(".partial.", ".old."))
    if path.exists():
        os.replace(path, old)
    os.replace(stage, path)
    shutil.rmtree(old, ignore_errors=True)


def _process_start() -> float:
    """When this process started (epoch seconds); from /proc where there is one, else the import time."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def remove_stale_siblings(path: Path) -> list[Path]:
    """Remove `.NAME.partial.*` / `.NAME.old.*` folders beside `path` left by a run that died before this one
    started (modified before this process began); returns what was removed."""
    started = _process_start() - 1.0  # /proc's start time is to the clock tick; btime to the second
    removed = []
    for prefix in (f".{path.name}.partial.", f".{path.name}.old."):
        for stale in path.parent.glob(f"{prefix}*"):
            try:
                if stale.lstat().st_mtime < started:
                    shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
                    removed.append(stale)
            except FileNotFoundError:  # another cleanup got there first
                continue
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, indented and key-sorted so equal content gives equal bytes."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_yaml(path: str | os.PathLike, what: str, error: type[Exception]) -> Any:
    """Parse a YAML file; a missing or malformed file raises `error` with one line naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def _renumber_shared_objects(config: bytes) -> bytes:
    """Keras' shared_object_id values renumbered 1, 2, ... in order of appearance: the same model, the same bytes."""
    ids: dict[bytes, bytes] = {}
    return re.sub(rb'"shared_object_id": (\d+)',
                  lambda m: b'"shared_object_id": ' + ids.setdefault(m.group(1), str(len(ids) + 1).encode()), config)


def save_keras(model: Any, path: str | os.PathLike) -> None:
    """model.save(path), byte-reproducible and atomic. Keras stamps the save date into metadata.json, the time
    into every zip entry and Python object ids (memory addresses) as config.json's shared_object_ids, so the same
    weights gave a new file each run: DVC saw a changed output and the registry a new checkpoint. The stamps are
    fixed and the ids renumbered in order of appearance (sharing kept); the weights file is already deterministic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        raw = Path(tmp) / path.name
        model.save(raw)
        buf = io.BytesIO()
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(buf, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "metadata.json":
                    meta = json.loads(data)
                    meta.pop("date_saved", None)
                    data = json.dumps(meta, sort_keys=True).encode()
                elif info.filename == "config.json":
                    data = _renumber_shared_objects(data)
                dst.writestr(zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH), data,
                             compress_type=info.compress_type)
        atomic_write_bytes(path, buf.getvalue())
