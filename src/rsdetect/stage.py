"""The entry-point wrapper of every stage script and of the CLI: an error the user can fix is one line, and so is
Ctrl-C."""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from rsdetect.errors import RsdetectError


def run_stage(main: Callable[[], object]) -> None:
    """Run an entry point; an RsdetectError becomes one line on stderr and exit code 2. Ctrl-C (KeyboardInterrupt)
    becomes the line `interrupted` and exit code 128 + the signal, as a shell reports a process its signal ended
    (130; 143 for a SIGTERM that scan's handlers raise as a KeyboardInterrupt carrying `signum`), instead of a
    40-line traceback through TensorFlow or a thread pool.

    Outputs are written atomically (rsdetect.io), so an interrupted stage leaves its previous outputs as they were.
    """
    try:
        main()
    except RsdetectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        _close_progress_bars()
        print("interrupted", file=sys.stderr)
        sys.exit(128 + int(getattr(exc, "signum", signal.SIGINT)))


def _close_progress_bars() -> None:
    """Close the tqdm bars an interrupt left open, so `interrupted` starts its own line instead of trailing one.
    Only if tqdm is loaded: a stage without bars does not import it for this."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
