"""COCO-format instances files: read once, every entry checked in one place, and the rules fetch and synthesis share.

Every reader of a dataset (synthesize, the training-pair stream, the external set, check-photos) goes through
`checked_instances`: a malformed image entry skips that image and a malformed person annotation skips that
person, each counted with its reason, instead of a traceback deep inside a worker. The person category, the
"usable person" polygon rule and the image decoding (with its truncated-JPEG check) live here too, so `fetch`
selects photos by exactly the rule synthesis uses them by.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import cv2
import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.limits import ImageSizeError, check_encoded, check_size

COCO_PERSON_ID = 1  # COCO's own id for "person": the fallback for a file that lists no categories at all


class SkipImage(Exception):
    """A photo that cannot give a sample; the message is the reason counted in the report."""


def load_instances(path: str | Path) -> dict:
    """Read a COCO instances JSON, with a one-line error naming the file if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RsdetectError(f"{path}: cannot read COCO instances ({exc})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations")):
        raise RsdetectError(f"{path}: not a COCO instances file (needs 'images' and 'annotations')")
    for key in ("images", "annotations"):
        if not isinstance(data[key], list):  # `annotations: null` is a broken file, not "no people"
            raise RsdetectError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__} "
                                f"(use [] for {'no photos' if key == 'images' else 'photos without people'})")
    return data


def person_category_ids(coco: dict) -> set[int]:
    """Ids of the categories named 'person'; COCO's id 1 only when the file lists no categories at all (a file
    that lists categories but no person has no people: id 1 may be something else there)."""
    categories = coco.get("categories")
    if not categories:
        return {COCO_PERSON_ID}
    return {c["id"] for c in categories if isinstance(c, dict) and c.get("name") == "person" and _is_int(c.get("id"))}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def polygon_problem(polygon: object) -> str | None:
    """Why a segmentation polygon is malformed (not a flat list of x, y numbers), or None. A well-formed
    polygon of fewer than 3 points is not malformed, only unusable (person_polygons leaves it out)."""
    if not isinstance(polygon, list):
        return "polygon is not a list of coordinates"
    if not all(_is_number(v) for v in polygon):
        return "polygon has a coordinate that is not a finite number"
    if len(polygon) % 2:
        return "polygon has an odd number of coordinates"
    return None


def annotation_problem(ann: object) -> str | None:
    """Why a person annotation cannot be used at all (malformed), or None. Crowd RLEs are well-formed."""
    if not isinstance(ann, dict):
        return "annotation is not an object"
    if not _is_int(ann.get("id")):
        return "annotation has no integer id"
    if not _is_int(ann.get("image_id")):
        return "annotation has no integer image_id"
    seg = ann.get("segmentation")
    if ann.get("iscrowd") or not isinstance(seg, list):
        return None  # crowd RLE or no polygons: never moved, nothing to check
    return next((problem for problem in map(polygon_problem, seg) if problem), None)


def person_polygons(ann: dict) -> list[list[float]]:
    """The annotation's polygons with at least 3 points: the one "usable person" rule. None for crowd RLE (never
    the moving person) and none for a malformed annotation (annotation_problem says why)."""
    seg = ann.get("segmentation")
    if ann.get("iscrowd") or not isinstance(seg, list) or annotation_problem(ann):
        return []
    return [p for p in seg if len(p) >= 6]


def usable_person(ann: dict, min_area: float) -> bool:
    """A person the synthesis can move and big enough by its COCO area: fetch's selection rule."""
    area = ann.get("area", 0)
    return _is_number(area) and area >= min_area and bool(person_polygons(ann))


def file_name_problem(name: object) -> str | None:
    """Why an image entry's file_name cannot be read safely under the dataset's images/ folder, or None."""
    if not isinstance(name, str) or not name.strip():
        return "image entry has no file_name"
    if "\0" in name:  # no file system takes it: open() raised ValueError and killed synthesize
        return "file_name contains a NUL byte"
    posix = PurePosixPath(name.replace("\\", "/"))
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or ".." in posix.parts:
        return "file_name points outside the dataset's images folder"
    return None


@dataclass(frozen=True)
class Instances:
    """A checked instances file: what can be used, and what was left out with its reason."""
    images: list[dict]                        # valid entries, unique ids, sorted by id
    people: dict[int, list[dict]]             # well-formed person annotations by image id
    skipped_images: list[dict] = field(default_factory=list)       # {"image_id", "file", "reason"}
    skipped_annotations: list[dict] = field(default_factory=list)  # {"ann_id", "image_id", "reason"}


def checked_instances(path: str | Path) -> Instances:
    """Read an instances file and check every image entry and person annotation (see the module docstring).

    Image entries: an integer id, a file_name inside images/ (no absolute path, no '..'); a repeated id keeps its
    first entry (two entries would write two manifest rows for one sample path). Person annotations: see
    annotation_problem; one on an image id no entry has is counted too.
    """
    coco = load_instances(path)
    images: dict[int, dict] = {}
    skipped_images = []
    for im in coco["images"]:
        image_id: Any = im.get("id") if isinstance(im, dict) else None  # anything a file holds, checked below
        name = im.get("file_name") if isinstance(im, dict) else None
        problem = ("image entry is not an object" if not isinstance(im, dict) else
                   "image entry has no integer id" if not _is_int(image_id) else
                   file_name_problem(name) or (f"duplicate image id {image_id} (its first entry is kept)"
                                               if image_id in images else None))
        if problem:
            skipped_images.append({"image_id": image_id if _is_int(image_id) else None,
                                   "file": name if isinstance(name, str) else None, "reason": problem})
        else:
            images[image_id] = im
    persons = person_category_ids(coco)
    people: dict[int, list[dict]] = {}
    skipped_annotations = []
    for ann in coco["annotations"]:
        if isinstance(ann, dict) and ann.get("category_id") not in persons:
            continue
        problem = annotation_problem(ann)
        if problem is None and ann["image_id"] not in images:
            if any(s["image_id"] == ann["image_id"] for s in skipped_images):
                continue  # its image is already counted as skipped
            problem = "annotation on an image id that no image entry has"
        if problem:
            skipped_annotations.append({"ann_id": ann.get("id") if isinstance(ann, dict) else None,
                                        "image_id": ann.get("image_id") if isinstance(ann, dict) else None,
                                        "reason": problem})
        else:
            people.setdefault(ann["image_id"], []).append(ann)
    return Instances([images[i] for i in sorted(images)], people, skipped_images, skipped_annotations)


def is_truncated_jpeg(data: bytes) -> bool:
    """True for a JPEG without its end-of-image marker: some libjpeg builds decode a cut file with grey fill,
    so only the marker tells."""
    return data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9")


def decode_image(data: bytes, name: str = "") -> np.ndarray:
    """Decode image bytes to 8-bit BGR; grayscale and 16-bit are converted, anything undecodable or outside the
    pixel limits (rsdetect.limits) is SkipImage."""
    if not data:
        raise SkipImage("empty file")
    try:
        check_encoded(data)  # before decoding: a 6 MB JPEG can declare 400 M pixels (2.4 GB decoded)
    except ImageSizeError as exc:
        raise SkipImage(f"image {exc}") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SkipImage("image cannot be decoded (corrupt or truncated)")
    try:
        check_size(img.shape[1], img.shape[0])  # again, for formats whose header Pillow cannot read
    except ImageSizeError as exc:
        raise SkipImage(f"image {exc}") from None
    if img.dtype == np.uint16:
        img = (img / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise SkipImage(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if is_truncated_jpeg(data):
        raise SkipImage("JPEG is truncated (no end-of-image marker)")
    return img


def image_problem(data: bytes) -> str | None:
    """Why these bytes are not a complete image synthesis can use, or None (fetch keeps only those)."""
    try:
        decode_image(data)
    except SkipImage as exc:
        return str(exc)
    return None
