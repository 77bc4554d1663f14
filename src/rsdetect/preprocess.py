"""The one home for turning image files and frames into model inputs: decoding, resizing, and the tiles a frame
is scored on. Training, evaluation, registration, the MLflow pyfunc and `scan` all go through here, so the same
bytes always give the same probability whichever path scores them.

Geometry: the model is trained on S x S images, each the short-side square of a photo resized to S (see
data.square_window). A frame is scored at that scale: its short side is resized to S and it is covered whole by
S x S tiles along its long side; the frame's probability is the highest of its tiles'. An S x S image is its one
tile, unresampled, so a synthesized training image gives the same input here as in training.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.limits import ImageSizeError, check_encoded, check_size

# Tiles along the long side start at most TILE_STRIDE * S apart. At one half, any detail up to S/2 wide that a
# tile border cuts lies whole inside the neighbouring tile; a 16:9 frame takes 3 tiles.
TILE_STRIDE = 0.5
TILE_BATCH = 32  # tiles per model call where the caller sets no batch: bounds activation memory, not frames
DECODE_WINDOW = 64  # files decoded ahead by decode_paths: threads stay busy without holding a whole test set

Box = tuple[int, int, int, int]  # (x, y, w, h) in the original frame's pixels
ScoreFn = Callable[[np.ndarray], object]  # (n, S, S, 3) float32 RGB 0-255 -> n probabilities


def decode(data: bytes | bytearray | memoryview | str | os.PathLike, name: str | None = None) -> np.ndarray:
    """Encoded image bytes, or the path of an image file, as RGB uint8 (H, W, 3).

    Grayscale is repeated to three channels, alpha dropped, 16-bit scaled to 8-bit. Anything unreadable,
    undecodable, or outside the pixel limits (rsdetect.limits: over images.max_pixels, or a side under 16 px)
    raises RsdetectError naming `name` (default: the path, or "input image").
    """
    if isinstance(data, (str, os.PathLike)):
        name = name or str(data)
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise RsdetectError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None
    name = name or "input image"
    encoded = data if isinstance(data, (bytes, bytearray)) else bytes(data)
    buf = np.frombuffer(encoded, np.uint8)
    try:
        check_encoded(encoded)  # before decoding: a 6 MB JPEG can declare 400 M pixels (2.4 GB decoded)
    except ImageSizeError as exc:
        raise RsdetectError(f"{name}: image {exc}") from None
    # IMREAD_UNCHANGED, not IMREAD_COLOR: no EXIF rotation, so rows stay sensor rows (rolling shutter acts along
    # them) as in synthesis (data.decode_image); 16-bit and alpha are converted below rather than by OpenCV.
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise RsdetectError(f"{name}: cannot decode image (corrupt, truncated or not an image)")
    try:
        check_size(img.shape[1], img.shape[0])  # again, for formats whose header Pillow cannot read
    except ImageSizeError as exc:
        raise RsdetectError(f"{name}: image {exc}") from None
    if img.dtype == np.uint16:
        img = (img / 257.0 + 0.5).astype(np.uint8)  # 65535 -> 255, rounded
    elif img.dtype != np.uint8:
        raise RsdetectError(f"{name}: unsupported pixel type {img.dtype} (give 8- or 16-bit images)")
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def encode_jpeg(image: np.ndarray, quality: int, what: str) -> np.ndarray:
    """A BGR (or gray) uint8 image as JPEG bytes (cv2's buffer); a failed encode raises RsdetectError naming `what`."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RsdetectError(f"{what}: cannot encode as JPEG")
    return buf


def decode_paths(paths: Iterable[str | os.PathLike], workers: int | None = None) -> Iterator[np.ndarray]:
    """decode() of each path, in order; a few threads decode ahead (cv2.imdecode releases the GIL)."""
    paths = list(paths)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), DECODE_WINDOW):
            yield from pool.map(decode, paths[start:start + DECODE_WINDOW])


def shrink(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to width x height: exact halvings (INTER_AREA's fast box filter) then one linear step.

    Antialiased like INTER_AREA, at about a sixth of the cost of one non-integer INTER_AREA resize. The synthesis
    makes its training images with this, so inference resizes frames with it too.
    """
    while image.shape[0] >= 2 * height and image.shape[1] >= 2 * width:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def shrink_square(image: np.ndarray, side: int) -> np.ndarray:
    """shrink() of a square to side x side (the synthesis' last step)."""
    return shrink(image, side, side)


def resize_short_side(frame: np.ndarray, size: int) -> np.ndarray:
    """The frame resized (aspect kept) so its short side is `size`; returned as is if it already is."""
    h, w = frame.shape[:2]
    if min(h, w) == size:  # S x S training images, and frames already at scale, are not resampled
        return frame
    if h <= w:
        return shrink(frame, max(size, round(w * size / h)), size)
    return shrink(frame, size, max(size, round(h * size / w)))


def tile_starts(long: int, size: int) -> list[int]:
    """Start offsets of the S x S tiles covering `long` pixels: evenly spaced, first at 0, last at long - S.

    n = ceil((long - S) / (S * TILE_STRIDE)) + 1, so neighbours start at most TILE_STRIDE * S apart.
    """
    if long <= size:
        return [0]
    n = math.ceil((long - size) / (size * TILE_STRIDE)) + 1
    return [round(i * (long - size) / (n - 1)) for i in range(n)]


def to_tiles(frame: np.ndarray, size: int) -> tuple[np.ndarray, list[Box]]:
    """The frame at the training scale as S x S tiles covering it whole, and each tile's box in the frame.

    Returns float32 (n, S, S, 3) RGB 0-255 tiles and n (x, y, w, h) boxes in the original frame's pixels (rounded;
    together they cover every pixel). An S x S frame gives one tile equal to it.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 1:
        raise RsdetectError(f"expected an RGB (H, W, 3) frame, got shape {tuple(frame.shape)}")
    h, w = frame.shape[:2]
    resized = resize_short_side(frame, size)
    rh, rw = resized.shape[:2]
    tiles, boxes = [], []
    if rw >= rh:  # landscape (or square): tiles along x
        for x in tile_starts(rw, size):
            tiles.append(resized[:, x:x + size])
            x0, x1 = round(x * w / rw), round((x + size) * w / rw)
            boxes.append((x0, 0, x1 - x0, h))
    else:
        for y in tile_starts(rh, size):
            tiles.append(resized[y:y + size])
            y0, y1 = round(y * h / rh), round((y + size) * h / rh)
            boxes.append((0, y0, w, y1 - y0))
    return np.stack(tiles).astype(np.float32), boxes


def load_square(path: str | os.PathLike, size: int) -> np.ndarray:
    """One training/evaluation image as its single float32 (S, S, 3) tile; RsdetectError if it is not square.

    A labelled example must be one model input: a non-square image would give several tiles for one label.
    """
    frame = decode(path)
    if frame.shape[0] != frame.shape[1]:
        raise RsdetectError(f"{path}: {frame.shape[1]}x{frame.shape[0]} is not square; training and evaluation "
                            f"images are one square window each (as synthesize writes them)")
    return to_tiles(frame, size)[0][0]


def box_text(box: Box) -> str:
    """A tile box as reports write it: "x,y,w,h"."""
    return ",".join(str(int(v)) for v in box)


def score_frames(score_fn: ScoreFn, frames: Iterable[np.ndarray], size: int,
                 batch: int = TILE_BATCH) -> tuple[np.ndarray, list[Box]]:
    """Score frames by their tiles: each frame's probability is the max over its tiles (the frame is flagged if
    any part of it is), and the box of the tile that gave it.

    The tiles of consecutive frames are pooled into model calls of `batch` tiles (the last one smaller), so
    a frame's tiles may straddle two calls. `score_fn` is called directly on each chunk (e.g. the Keras model
    with training=False; Keras' predict() costs far more per call than it saves). Frames are consumed lazily:
    only one chunk's tiles are held at a time.
    """
    return score_tiled(score_fn, (to_tiles(frame, size) for frame in frames), batch)


def score_tiled(score_fn: ScoreFn, tiled: Iterable[tuple[np.ndarray, list[Box]]],
                batch: int = TILE_BATCH) -> tuple[np.ndarray, list[Box]]:
    """score_frames on frames already cut into tiles by to_tiles (scan cuts them in its reader thread, so the
    resizing overlaps the model instead of holding it up)."""
    if batch < 1:
        raise RsdetectError(f"batch must be >= 1, got {batch}")
    probs: list[float] = []
    boxes: list[Box] = []
    pending: list[np.ndarray] = []  # tiles not yet scored
    owners: list[tuple[int, Box]] = []  # (frame number, box) of every tile not yet settled, in order
    scores: list[float] = []  # the scores of owners[:len(scores)]

    def run(chunk: list[np.ndarray]) -> None:
        out = np.asarray(score_fn(np.stack(chunk)), np.float64).reshape(-1)
        if len(out) != len(chunk):
            raise RsdetectError(f"model returned {len(out)} scores for a batch of {len(chunk)} tiles")
        scores.extend(out.tolist())

    def settle() -> None:
        """Reduce each leading frame whose tiles are all scored to its max (a frame's tiles arrive together)."""
        nonlocal owners, scores
        i = 0
        while i < len(scores):
            j = i
            while j < len(owners) and owners[j][0] == owners[i][0]:
                j += 1
            if j > len(scores):
                break
            # argmax, not nanargmax: a NaN tile makes the frame NaN, so a broken model cannot pass as "clean".
            k = i + int(np.argmax(scores[i:j]))
            probs.append(scores[k])
            boxes.append(owners[k][1])
            i = j
        owners, scores = owners[i:], scores[i:]

    for n, (tiles, frame_boxes) in enumerate(tiled):
        owners.extend((n, b) for b in frame_boxes)
        pending.extend(tiles)
        while len(pending) >= batch:
            run(pending[:batch])
            pending = pending[batch:]
            settle()
    if pending:
        run(pending)
        settle()
    return np.asarray(probs, np.float64), boxes
