"""The flag rule: the operating threshold (one resolver for scan, watch and the champion gate) and the per-camera
smoothing a flag is taken on. Light on imports: a camera's decoder process applies the same rule to decide which
frames' pixels cross to the scorer (rsdetect.video.stream)."""
from __future__ import annotations

from collections import deque

from rsdetect.errors import RsdetectError

# A plain model file carries no operating point (a registered model has the one `evaluate` chose on validation,
# an export its sidecar): 0.5 is where its sigmoid says "more likely distorted than not".
DEFAULT_THRESHOLD = 0.5


def resolve_threshold(*choices: float | None) -> float:
    """The first threshold given, in order of precedence (the user's flag, then the model's own), else
    DEFAULT_THRESHOLD."""
    return next((float(c) for c in choices if c is not None), DEFAULT_THRESHOLD)


# Video frames are scored by their measured evidence (rsdetect.video), whose probability is a logistic centred on
# video.analysis.flag_shear_px: 0.5 is the flag at that shear. The model's threshold is for its own scores (stills).
EVIDENCE_THRESHOLD = 0.5


class RollingMean:
    """The mean of the last k values pushed (of all of them while fewer than k): the per-camera smoothing."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise RsdetectError(f"--smooth must be >= 1, got {k}")
        self._window: deque[float] = deque(maxlen=k)

    def push(self, value: float) -> float:
        """Add a value; the mean of the window now."""
        self._window.append(value)
        # the window's mean (np.mean's to the last bit or two; rows keep 6 decimals) without np.mean's ~20 us a frame
        return sum(self._window) / len(self._window)
