"""Where `scan` and `export` write: checked before any slow work (model loading, conversion), and a scan's
report folder claimed with a lock so two runs cannot interleave their reports.
"""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from rsdetect.errors import RsdetectError
from rsdetect.io import default_file_mode


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (a file counts: it is what blocks the way)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_parent(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Fail fast, with one line, unless files can be created beside `path` (its folder, made if missing).

    Returns `path` made absolute, so that a later chdir or '.' cannot change where things go.
    """
    path = Path(path).absolute()
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise RsdetectError(f"{flag} {path}: {base} is a file, not a folder")
    try:  # a real probe: permission bits say nothing for root, nor about read-only mounts
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise RsdetectError(f"{flag} {path}: cannot write in {base} ({exc.strerror or type(exc).__name__})") from None
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output file's path, checked: not a folder, and its folder can be created or written to."""
    path = check_writable_parent(path, flag)
    if path.is_dir():
        raise RsdetectError(f"{flag} {path}: is a folder; give a file name")
    return path


def check_report_dir(path: str | os.PathLike, is_report: Callable[[str], bool], flag: str = "--out") -> Path:
    """A report folder's path, checked: a folder (or nothing yet) that holds only earlier reports.

    The report set is swapped in whole, replacing the folder; a folder with anything else in it (the
    user's videos, '.') is refused rather than deleted.
    """
    path = check_writable_parent(path, flag)
    if path.exists() and not path.is_dir():
        raise RsdetectError(f"{flag} {path}: is a file, not a folder")
    real = Path(os.path.realpath(path))  # a link to '.' is '.' (the reports go to a link's target)
    if real == Path.cwd().resolve() or real in Path.cwd().resolve().parents:
        raise RsdetectError(f"{flag} {path}: is the current folder or above it; give a folder for the reports")
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise RsdetectError(f"{flag} {path}: cannot be read")
        foreign = sorted(p.name for p in path.iterdir() if not is_report(p.name))
        if foreign:
            raise RsdetectError(f"{flag} {path}: holds files that are not rsdetect reports ({foreign[0]}"
                                f"{', ...' if len(foreign) > 1 else ''}); "
                                "give a new or empty folder, or an earlier report folder")
    return path


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of a report folder: beside it, not in it, because the folder itself is replaced."""
    out = Path(out).absolute()
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """An exclusive claim on a report folder (fcntl.flock on a file beside it), held until release.

    The kernel drops the lock when the process dies, so a crash never leaves a folder claimed; the file is
    removed on release, and a claim re-checks that the file it locked is still the one at the path (another
    run may have removed it between our open and our lock).
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out).absolute()
        self.path = lock_path(self.out)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock, or raise RsdetectError at once if another run holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RsdetectError(f"--out {self.out}: cannot create {self.path.parent} ({exc.strerror})") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, default_file_mode())
            except OSError as exc:
                raise RsdetectError(f"--out {self.out}: cannot create the lock {self.path} ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise RsdetectError(f"--out {self.out}: another scan or watch is writing there now "
                                        f"(lock {self.path}); wait for it or give another folder") from None
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())  # for a person wondering who holds it
                return self
            os.close(fd)  # the file was removed by the previous holder: lock the new one

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order, so nobody locks a file about to vanish)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> OutputLock:
        return self if self.held else self.acquire()  # claim() hands over a lock already held

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
