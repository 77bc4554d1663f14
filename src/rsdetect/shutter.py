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
              border: int = cv2.BORDER_REFLECT_101, interpolation: int = cv2.INTER_LINEAR,
              box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Move row y of `image` by (dx_rows[y], dy_rows[y]): out(x, y) = in(x - dx(y), y - dy(y)). One vectorised remap.

    `box` (x, y, w, h) computes only that part of the output, the same pixels as cropping the full result.
    """
    h, w = image.shape[:2]
    x0, y0, bw, bh = box if box is not None else (0, 0, w, h)
    rows = slice(y0, y0 + bh)
    map_x = np.arange(x0, x0 + bw, dtype=np.float32)[None, :] - dx_rows[rows].astype(np.float32)[:, None]
    map_y = np.arange(y0, y0 + bh, dtype=np.float32)[:, None] - dy_rows[rows].astype(np.float32)[:, None]
    map_y = np.broadcast_to(map_y, (bh, bw))
    return cv2.remap(image, map_x, np.ascontiguousarray(map_y), interpolation, borderMode=border, borderValue=0)


def fill_person_hole(image: np.ndarray, mask: np.ndarray, radius: int = 2, downscale: int = 4) -> np.ndarray:
    """The background with the person removed: the dilated mask inpainted by OpenCV (Telea), pasted into the hole only.

    The fill is computed at 1/downscale resolution: Telea's fill is a smooth smear at any scale (full and quarter
    resolution look alike at 224 px), and a sixteenth of the pixels costs a twelfth of the time. It dominated
    synthesis; both classes share this background, so the fill is no cue.
    """
    hole = cv2.dilate((mask > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8))
    h, w = hole.shape
    small_size = (max(1, w // downscale), max(1, h // downscale))
    small_hole = cv2.dilate(cv2.resize(hole, small_size, interpolation=cv2.INTER_NEAREST), np.ones((3, 3), np.uint8))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    fill = cv2.resize(cv2.inpaint(small, small_hole, radius, cv2.INPAINT_TELEA), (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.copyTo(fill, hole, image.copy())


def move_person(image: np.ndarray, background: np.ndarray, moved_alpha: np.ndarray,
                dx_rows: np.ndarray, dy_rows: np.ndarray) -> np.ndarray:
    """Move the person's rows by (dx, dy) and paste them over the filled background.

    `moved_alpha` is the person's soft mask already moved the same way (warp_rows with a constant border).
    """
    # Warp and blend only inside the moved person's box: outside it alpha is 0 and the background is kept as is.
    x, y, w, h = cv2.boundingRect((moved_alpha > 0).astype(np.uint8))
    out = background.copy()
    if w and h:
        person = warp_rows(image, dx_rows, dy_rows, border=cv2.BORDER_REPLICATE, box=(x, y, w, h))
        box = (slice(y, y + h), slice(x, x + w))
        a = moved_alpha[box][..., None]
        out[box] = np.clip(background[box] * (1 - a) + person * a + 0.5, 0, 255).astype(np.uint8)
    return out


def shear_extent(dx_rows: np.ndarray, dy_rows: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Effective rolling-shutter displacement: the largest distance between the displacements of two rows.

    Zero for any rigid (global-shutter) motion; `rows` restricts it to the rows an object occupies.
    """
    if rows is not None:
        dx_rows, dy_rows = dx_rows[rows], dy_rows[rows]
    if dx_rows.size == 0:
        return 0.0
    # The diameter of the point set: the farthest pair are both vertices of its convex hull. Exact; a turning
    # person's curve is convex, so every point can be a vertex: squared distances from one Gram matrix product
    # (3x faster than an N x N x 2 difference array).
    hull = cv2.convexHull(np.stack([dx_rows, dy_rows], 1).astype(np.float32)).reshape(-1, 2).astype(np.float64)
    sq = (hull * hull).sum(1)
    return float(np.sqrt(max((sq[:, None] + sq[None, :] - 2 * hull @ hull.T).max(), 0.0)))
