"""The one error class a user can act on. Entry points (rsdetect.stage, the CLI) print it as one line."""


class RsdetectError(Exception):
    """An error the user can fix; entry points print it as one line and exit non-zero."""
