"""The one way `scan` and `watch` stop on SIGINT (Ctrl-C) or SIGTERM (systemd, docker stop): reports are completed
whole however often the user presses Ctrl-C.

While a StopSignals is active (main thread only: handlers cannot be set elsewhere), the first signal records its
name (`said`) and sets `stop`, an Event the camera readers and loops poll. With `interrupt` (scan, and every
command while its model loads) it also raises Interrupted in the main thread, to get out of a blocking read at
once, except inside a `held()` block, which it interrupts when the block ends. Later signals, and any after
`defer()`, are only announced. Messages go out with os.write: a handler that prints while the main thread prints
raises "reentrant call".
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM while a command runs; a KeyboardInterrupt, so Ctrl-C handling covers both."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process its signal ended: 130 Ctrl-C, 143 SIGTERM."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


class StopSignals:
    """See the module docstring. `command` prefixes the announcements ("scan", "watch")."""

    active: StopSignals | None = None  # the innermost one whose handlers are set (signals are process-wide)

    def __init__(self, command: str, interrupt: bool = True) -> None:
        self.command, self.interrupt = command, interrupt
        self.stop = threading.Event()
        self.said: list[str] = []
        self.deferring = False
        self._saved: dict[int, Any] = {}
        self._outer: StopSignals | None = None
        self._holding = False
        self._pending: int | None = None

    def defer(self) -> None:
        """From now on, signals no longer interrupt."""
        self.deferring = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A block a signal must not cut in two: a signal that arrives in it interrupts when the block ends."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending is not None and not self.deferring:
            self.deferring = True
            raise Interrupted(self._pending)

    def _say(self, text: str) -> None:
        os.write(2, f"{self.command}: {text}\n".encode())

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set() or self.deferring:
            self._say(f"{name}: already stopping; finishing the reports first")
            return
        self.said.append(name)
        self.stop.set()
        if not self.interrupt:
            self._say(f"{name}: stopping; scoring what was read, completing the reports")
        elif self._holding:
            self._pending = signum
        else:
            self.deferring = True
            raise Interrupted(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._saved = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
            self._outer, StopSignals.active = StopSignals.active, self
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        if self._saved:
            StopSignals.active = self._outer
        self._saved = {}


def uninterrupted() -> contextlib.AbstractContextManager[None]:
    """The active StopSignals' held() block; nothing to hold where none is active (a worker process, a thread)."""
    return StopSignals.active.held() if StopSignals.active is not None else contextlib.nullcontext()
