"""The pixel limits of every image this package decodes: a decoded frame is width x height x 3 bytes, so one
20000 x 20000 JPEG of 6 MB took 2.4 GB, and scan's batch plus read-ahead of them would exhaust any host.

Every decoder checks the size an image's header declares before decoding it (check_encoded), and the size of
what it decoded (check_size): images above images.max_pixels (params.yaml) or under MIN_SIDE are refused with one
line naming the file. The maximum is process-wide, like OpenCV's own OPENCV_IO_MAX_IMAGE_PIXELS: load_params sets
it from params.yaml (rsdetect.config); the processes this package starts are handed it (synthesis workers through
their initializer, decoder processes in their ReadRequest, Dask tasks in ScanOptions).
"""
from __future__ import annotations

import io
import warnings

# Shorter sides than this hold no rolling-shutter evidence a model trained on 160 px windows can see; synthesis
# never trains on them, so scan does not score them either (a 1x1 px image scored p 8e-5, a confident "clean").
MIN_SIDE = 16
# Where no params.yaml was loaded (a camera host running scan on an exported model): params.yaml's own value.
FALLBACK_MAX_PIXELS = 40_000_000
_max_pixels = FALLBACK_MAX_PIXELS


class ImageSizeError(ValueError):
    """An image too large or too small to decode; callers turn it into their own one-line error or skip."""


def set_max_pixels(limit: int) -> None:
    """Make `limit` the largest width x height this process decodes."""
    global _max_pixels
    _max_pixels = int(limit)


def max_pixels() -> int:
    """The largest width x height to decode: images.max_pixels as load_params set it, else FALLBACK_MAX_PIXELS."""
    return _max_pixels


def check_size(width: int, height: int) -> None:
    """ImageSizeError unless MIN_SIDE <= each side and width x height <= max_pixels()."""
    if width * height > max_pixels():
        raise ImageSizeError(f"too large: {width}x{height} px is over the limit of {max_pixels():,} pixels "
                             f"(images.max_pixels)")
    if min(width, height) < MIN_SIDE:
        raise ImageSizeError(f"too small: {width}x{height} px (a side under {MIN_SIDE} px)")


def declared_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header without decoding its pixels (Pillow reads only the
    header), or None where Pillow does not know the format (OpenCV may; its decode is then checked after).
    ImageSizeError for a header so large that Pillow will not even report it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit speaks instead
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError:
        # Pillow refuses a header over twice its own MAX_IMAGE_PIXELS (about 179 M px) without giving the size;
        # the schema keeps images.max_pixels below that, so such an image is over our limit too.
        raise ImageSizeError(f"too large: its header declares over {2 * int(Image.MAX_IMAGE_PIXELS or 0):,} pixels, "
                             f"over the limit of {max_pixels():,} (images.max_pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):  # SyntaxError: Pillow's own parse errors
        return None


def check_encoded(data: bytes | bytearray | memoryview) -> None:
    """ImageSizeError if an encoded image's header declares a size check_size refuses; decode it only if not."""
    size = declared_size(data)
    if size is not None:
        check_size(*size)
