"""Rolling-shutter image math: pure functions, arrays in and arrays out.

A rolling-shutter sensor reads row y at time t(y) = readout * y / (H - 1) (in frame intervals).
Whatever moves is drawn where it was at its row's time, so a motion d(t) = (dx, dy) gives row y
the displacement d(t(y)). A global shutter reads every row at one instant t*: a rigid shift d(t*).
Both are applied by one backward remap, so the two classes differ only in the row dependence.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Motion:
    """What moves during readout. kind: object | pan | vibration; lengths in output pixels per frame interval."""
    kind: str
    speed: float = 0.0        # object / pan: px per frame interval
    direction: float = 0.0    # radians, 0 = rightwards, pi/2 = downwards
    turn: float = 0.0         # object: px of extra sideways displacement at t = 1 (curved skew of a turning body)
    amplitude: float = 0.0    # vibration: px
    cycles: float = 0.0       # vibration: sine cycles per frame interval
    phase: float = 0.0        # vibration: radians


def displacement(motion: Motion, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Displacement (dx, dy) in px at times t (frame intervals) for a motion."""
    t = np.asarray(t, np.float64)
    ux, uy = np.cos(motion.direction), np.sin(motion.direction)
    if motion.kind == "vibration":
        s = motion.amplitude * np.sin(2 * np.pi * motion.cycles * t + motion.phase)
        return s * ux, s * uy
    along = motion.speed * t
    side = motion.turn * t * t if motion.kind == "object" else 0.0 * t
    return along * ux - side * uy, along * uy + side * ux


def row_times(height: int, readout: float) -> np.ndarray:
    """Readout time of each row: 0 for the top row, `readout` for the bottom one."""
    return readout * np.arange(height, dtype=np.float64) / max(height - 1, 1)


def rolling_rows(motion: Motion, height: int, readout: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-row displacement of a rolling shutter."""
    return displacement(motion, row_times(height, readout))


def global_rows(motion: Motion, height: int, t_star: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-row displacement of a global shutter exposing every row at t_star: the same on every row."""
    dx, dy = displacement(motion, np.array([t_star]))
    return np.full(height, dx[0]), np.full(height, dy[0])


def warp_rows(image: np.ndarray, dx_rows: np.ndarray, dy_rows: np.ndarray,
              border: int = cv2.BORDER_REFLECT_101, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Move row y of `image` by (dx_rows[y], dy_rows[y]): out(x, y) = in(x - dx(y), y - dy(y)). One vectorised remap."""
    h, w = image.shape[:2]
    map_x = np.arange(w, dtype=np.float32)[None, :] - dx_rows.astype(np.float32)[:, None]
    map_y = np.arange(h, dtype=np.float32)[:, None] - dy_rows.astype(np.float32)[:, None]
    map_y = np.broadcast_to(map_y, (h, w))
    return cv2.remap(image, map_x.astype(np.float32), np.ascontiguousarray(map_y, np.float32),
                     interpolation, borderMode=border, borderValue=0)


def fill_person_hole(image: np.ndarray, mask: np.ndarray, radius: int = 5) -> np.ndarray:
    """The background with the person removed: the (slightly dilated) mask inpainted by OpenCV (Telea)."""
    hole = cv2.dilate((mask > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8))
    return cv2.inpaint(image, hole, radius, cv2.INPAINT_TELEA)


def move_person(image: np.ndarray, background: np.ndarray, alpha: np.ndarray,
                dx_rows: np.ndarray, dy_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut the person (soft mask `alpha`), move its rows by (dx, dy), paste it over the filled background."""
    person = warp_rows(image, dx_rows, dy_rows, border=cv2.BORDER_REPLICATE)
    moved = warp_rows(alpha.astype(np.float32), dx_rows, dy_rows, border=cv2.BORDER_CONSTANT)
    a = moved[..., None]
    out = background.astype(np.float32) * (1 - a) + person.astype(np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), moved


def shear_extent(dx_rows: np.ndarray, dy_rows: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Effective rolling-shutter displacement: the largest distance between the displacements of two rows.

    Zero for any rigid (global-shutter) motion; `rows` restricts it to the rows an object occupies.
    """
    if rows is not None:
        dx_rows, dy_rows = dx_rows[rows], dy_rows[rows]
    if dx_rows.size == 0:
        return 0.0
    pts = np.stack([dx_rows, dy_rows], 1)
    hull = pts[[np.argmin(dx_rows), np.argmax(dx_rows), np.argmin(dy_rows), np.argmax(dy_rows)]]
    # Max pairwise distance: exact via all pairs on a subsample plus the axis extremes.
    sub = np.concatenate([pts[:: max(1, len(pts) // 128)], hull])
    return float(np.sqrt(((sub[:, None, :] - sub[None, :, :]) ** 2).sum(-1)).max())
