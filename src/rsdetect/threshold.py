"""The operating threshold: one resolver for scan, watch and the champion gate."""
from __future__ import annotations

# A plain model file carries no operating point (a registered model has the one `evaluate` chose on validation,
# an export its sidecar): 0.5 is where its sigmoid says "more likely distorted than not".
DEFAULT_THRESHOLD = 0.5


def resolve_threshold(*choices: float | None) -> float:
    """The first threshold given, in order of precedence (the user's flag, then the model's own), else
    DEFAULT_THRESHOLD."""
    return next((float(c) for c in choices if c is not None), DEFAULT_THRESHOLD)
