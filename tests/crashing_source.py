"""A camera whose decoder dies in native code, as a real AVI made OpenCV's do (heap corruption, SIGABRT): it yields
`good` frames, then calls os.abort(), which no Python handler can catch. Its own module, so a decoder process
(forkserver) can import the class by name."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from rsdetect.serve.sources import Source


@dataclass(frozen=True)
class AbortingSource(Source):
    good: int = 2
    kind: ClassVar[str] = "video"

    def count(self, every, fps):
        return None

    def frames(self, on_error, every=1, fps=None, max_frames=None, on_note=None):
        rng = np.random.default_rng(0)
        for i in range(self.good):
            yield i, i / 25, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        os.abort()
