"""The entry-point wrapper of every stage script and of the CLI: an error the user can fix is one line."""
from __future__ import annotations

import sys
from collections.abc import Callable

from rsdetect.errors import RsdetectError


def run_stage(main: Callable[[], object]) -> None:
    """Run an entry point; an RsdetectError becomes one line on stderr and exit code 2."""
    try:
        main()
    except RsdetectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
