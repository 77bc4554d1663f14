"""Atomic file writes (an output is either absent or complete, never half-written) and file digests.

The one home of write-to-temp-then-rename, of the umask lookup and of the md5 of a file: every module that
writes an output or fingerprints a file uses these.
"""
from __future__ import annotations

import glob
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


def through_links(path: str | os.PathLike) -> Path:
    """`path`, or where it points if it is a symbolic link: an output that is a link is written into its target
    (staged and renamed beside the target), never by replacing the link with a real file or folder."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file to write (and check, through its `.name`) that takes `path`'s name only when the block
    completes; on any exception or interrupt the temp file is removed and `path` is untouched.

    For outputs streamed in chunks (a 250 MB download) or checked before they are kept (an exported model).
    `suffix` is the temp file's ending, for readers that go by it.
    """
    path = through_links(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A SIGKILLed run's temp file (a half download); one writer per output, as for staged_dir.
    _remove_stale(path.parent, [f".{glob.escape(path.name)}.*{glob.escape(suffix)}"])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner_tag()}", suffix=suffix)
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
    """A fresh folder beside `path` to fill; it replaces `path` only when the block completes (`path` a link:
    its target, beside the target; the link stays).

    For outputs of many files: plain writes inside (no per-file temp and rename), and an interrupted
    run (an exception, Ctrl-C) leaves the previous folder untouched and no partial one behind.

    A run killed outright (SIGKILL, power loss) cannot clean up, so each run first removes the
    `.NAME.partial.*` and `.NAME.old.*` siblings of `path` that are a dead run's: their name carries the
    process id of the run that made them, and that process is gone, or they are older than this process.
    This assumes one writer per output on this host (the pipeline runs a stage once at a time).
    """
    path = through_links(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial.{_owner_tag()}"))
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
    name = glob.escape(path.name)
    return _remove_stale(path.parent, [f".{name}.partial.*", f".{name}.old.*"])


_OWNER = re.compile(r"\.p(\d+)\.")  # the process id _owner_tag writes into a temp name


def _owner_tag() -> str:
    """The part of a temp name that says which process made it, so a later run can tell a dead run's leftovers
    from a live one's even when the two started within the same second."""
    return f"p{os.getpid()}."


def _owner_dead(name: str) -> bool:
    """True if `name` carries the process id of a process that no longer runs on this host."""
    match = _OWNER.search(name)
    if match is None or int(match.group(1)) == os.getpid():
        return False
    try:
        os.kill(int(match.group(1)), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return False


def _remove_stale(folder: Path, patterns: list[str]) -> list[Path]:
    """Remove what matches `patterns` in `folder` and is a dead run's: its maker's process id (in the name) is
    gone, or it was last modified before this process started."""
    started = _process_start() - 1.0  # /proc's start time is to the clock tick; btime to the second
    removed = []
    for pattern in patterns:
        for stale in folder.glob(pattern):
            try:
                if _owner_dead(stale.name) or stale.lstat().st_mtime < started:
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


class DuplicateKeyError(ValueError):
    """A YAML mapping that names one key twice (the message names the key and its line)."""


def _unique_key_loader() -> type:
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last value silently, so
    `seed` written twice in params.yaml ran a stage on whichever came last (DVC itself rejects such a file)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: construct_mapping reports it below
                    continue
                if duplicate:
                    raise DuplicateKeyError(f"key {key!r} appears twice (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def read_yaml(path: str | os.PathLike, what: str, error: type[Exception]) -> Any:
    """Parse a YAML file; a missing, unreadable or malformed file, or one with a key written twice in a mapping,
    raises `error` with one line naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKeyError as exc:
        raise error(f"{path}: {exc}") from None
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
