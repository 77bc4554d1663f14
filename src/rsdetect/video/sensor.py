"""What is known of a camera's sensor, its readout time and its shutter, checked in one place: where a user gives it
(a cameras YAML entry, --readout-ms / --shutter) and where the video analysis is handed it."""
from __future__ import annotations

import math
from dataclasses import dataclass

from rsdetect.errors import RsdetectError

SHUTTERS = ("rolling", "global")
# A sensor that takes longer than this to read one frame is not a video sensor (Gyroflow's 971 measured cameras:
# 6.4-33.4 ms from the 10th to the 90th percentile; a frame at 10 fps lasts 100 ms).
MAX_READOUT_MS = 200.0


@dataclass(frozen=True)
class Sensor:
    """What is known of a camera's sensor: its readout time in ms and its shutter, each None when not told."""

    readout_ms: float | None = None
    shutter: str | None = None


def check_sensor(readout_ms: object, shutter: object, where: str) -> Sensor:
    """A Sensor from user input, or a one-line RsdetectError naming `where` and the bad value."""
    if shutter is not None and shutter not in SHUTTERS:
        raise RsdetectError(f"{where}: shutter must be 'rolling' or 'global', got {shutter!r}")
    if readout_ms is not None:
        if isinstance(readout_ms, bool) or not isinstance(readout_ms, (int, float)) \
                or not (math.isfinite(readout_ms) and 0 < readout_ms <= MAX_READOUT_MS):
            raise RsdetectError(f"{where}: readout_ms must be a number of milliseconds in (0, {MAX_READOUT_MS:g}], "
                                f"got {readout_ms!r}")
        if shutter == "global":
            raise RsdetectError(f"{where}: a global shutter has no readout time; give readout_ms or shutter: global, "
                                "not both")
    return Sensor(None if readout_ms is None else float(readout_ms), shutter)
