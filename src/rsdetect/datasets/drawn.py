"""The embedded default dataset: photograph-like hallway scenes with person figures, in COCO format.

Everything the real COCO path meets is here on purpose: non-convex polygons, people split in
several parts by an occluder, people cut by the image border, tiny people, crowd RLE, grayscale
photos. Generated offline and byte-identically from the seed, so later stages run the same
pycocotools code path they run on real COCO.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from rsdetect.io import atomic_write_bytes, atomic_write_text
from rsdetect.preprocess import encode_jpeg

PERSON_CATEGORY = {"id": 1, "name": "person", "supercategory": "person"}
# The drawn scenes are stored like COCO photos (JPEG, quality 90 as Flickr-sourced images roughly are); the
# committed data.dvc snapshot was made with it, and a test regenerates the sample byte for byte.
JPEG_QUALITY = 90


def _color(rng: np.random.Generator, lo: int = 20, hi: int = 235) -> tuple[int, int, int]:
    b, g, r = (int(c) for c in rng.integers(lo, hi, 3))
    return b, g, r


def draw_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A hallway-like background: wall and floor, doors, pillars and windows with straight edges, sensor noise."""
    img = np.empty((height, width, 3), np.float32)
    horizon = int(height * rng.uniform(0.45, 0.7))
    wall, floor = np.array(_color(rng, 60, 220), np.float32), np.array(_color(rng, 30, 180), np.float32)
    ramp = np.linspace(0.8, 1.1, height, dtype=np.float32)[:, None, None]
    img[:horizon] = wall
    img[horizon:] = floor
    img *= ramp
    for _ in range(rng.integers(2, 6)):  # doors, windows, posters: straight vertical edges everywhere
        x0, w = int(rng.integers(0, width)), int(rng.integers(width // 20, width // 4))
        y0 = int(rng.integers(0, max(1, horizon - 10)))
        y1 = int(rng.integers(y0 + 10, height))
        cv2.rectangle(img, (x0, y0), (x0 + w, y1), _color(rng), -1)
        cv2.rectangle(img, (x0, y0), (x0 + w, y1), _color(rng, 0, 80), int(rng.integers(1, 4)))
    for _ in range(rng.integers(3, 9)):  # floor tiles / perspective lines
        x = int(rng.integers(-width, 2 * width))
        cv2.line(img, (width // 2, horizon), (x, height), _color(rng, 0, 120), 1, cv2.LINE_AA)
    img = np.asarray(cv2.GaussianBlur(img, (3, 3), 0), np.float32)
    img += rng.normal(0, rng.uniform(2, 7), img.shape).astype(np.float32)
    return img


def figure_mask(rng: np.random.Generator, width: int, height: int, cx: float, feet_y: float,
                h: float) -> tuple[np.ndarray, dict]:
    """Rasterise a person figure (head, torso, two arms, two legs in a random pose) as a uint8 mask."""
    m = np.zeros((height, width), np.uint8)
    parts = {"torso": np.zeros_like(m), "legs": np.zeros_like(m), "head": np.zeros_like(m)}
    top = feet_y - h
    shoulder_y, hip_y = top + 0.2 * h, top + 0.55 * h
    half_w = 0.13 * h * rng.uniform(0.85, 1.2)
    torso = np.array([[cx - half_w, shoulder_y], [cx + half_w, shoulder_y],
                      [cx + 0.9 * half_w, hip_y], [cx - 0.9 * half_w, hip_y]])
    cv2.fillPoly(parts["torso"], [np.round(torso).astype(np.int32)], 255)
    for side in (-1, 1):
        stride = rng.uniform(-0.35, 0.35)
        leg = np.array([[cx + side * 0.1 * h - 0.06 * h, hip_y], [cx + side * 0.1 * h + 0.06 * h, hip_y],
                        [cx + side * 0.05 * h + stride * 0.45 * h + 0.05 * h, feet_y],
                        [cx + side * 0.05 * h + stride * 0.45 * h - 0.05 * h, feet_y]])
        cv2.fillPoly(parts["legs"], [np.round(leg).astype(np.int32)], 255)
        angle = rng.uniform(0.1, 1.3)
        sx, sy = cx + side * half_w, shoulder_y + 0.03 * h
        ex, ey = sx + side * np.sin(angle) * 0.38 * h, sy + np.cos(angle) * 0.38 * h
        cv2.line(parts["torso"], (int(sx), int(sy)), (int(ex), int(ey)), 255, max(1, int(0.07 * h)), cv2.LINE_8)
    cv2.circle(parts["head"], (int(cx), int(top + 0.1 * h)), max(1, int(0.1 * h)), 255, -1)
    for p in parts.values():
        m |= p
    return m, parts


def paint_figure(img: np.ndarray, rng: np.random.Generator, parts: dict, visible: np.ndarray) -> None:
    """Paint clothes (plain or vertically striped shirt), trousers and skin onto img where visible."""
    height, width = visible.shape
    shirt, trousers = np.array(_color(rng), np.float32), np.array(_color(rng, 10, 150), np.float32)
    skin = np.array([rng.uniform(60, 140), rng.uniform(90, 170), rng.uniform(130, 230)], np.float32)
    xs = np.arange(width, dtype=np.float32)
    shade = 0.85 + 0.3 * (0.5 + 0.5 * np.sin(xs / rng.uniform(3, 12)))[None, :, None]
    if rng.random() < 0.5:  # stripes make shear visible inside the body too
        period = rng.uniform(3, 9)
        stripes = ((xs // period) % 2).astype(np.float32)[None, :, None]
        shirt_layer = shirt * (1 - stripes) + np.array(_color(rng), np.float32) * stripes
    else:
        shirt_layer = shirt * shade
    for name, colour in (("legs", trousers * shade), ("torso", shirt_layer), ("head", skin)):
        where = (parts[name] > 0) & (visible > 0)
        layer = np.broadcast_to(colour, img.shape) if np.ndim(colour) else colour
        img[where] = layer[where]


def polygons_from_mask(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons ([x0, y0, x1, y1, ...], at least 3 points each)."""
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3:
            polys.append([round(float(v) + 0.5, 2) for v in c.reshape(-1)])
    return polys


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (as used for crowd annotations): run lengths in column-major order, zeros first."""
    flat = (mask > 0).astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _annotation(segmentation, height: int, width: int, ann_id: int, image_id: int, iscrowd: int) -> dict | None:
    if iscrowd:
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    area = float(mask_utils.area(rle))
    if area <= 0:
        return None
    bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": iscrowd,
            "segmentation": segmentation, "area": round(area, 2), "bbox": bbox}


def make_scene(seed: int, image_id: int, width: int, height: int) -> tuple[np.ndarray, list[dict]]:
    """One scene: a BGR uint8 image and its person annotations (ids filled in later)."""
    rng = np.random.default_rng([seed, image_id])
    img = draw_background(rng, width, height)
    people = []
    for _ in range(int(rng.integers(1, 4))):
        r = rng.random()
        h = height * (rng.uniform(0.06, 0.12) if r < 0.15 else rng.uniform(0.35, 0.95))  # some tiny people
        cx = rng.uniform(-0.05, 1.05) * width  # some cut by the left/right border
        feet = rng.uniform(0.75, 1.15) * height  # some cut by the bottom border
        people.append((feet, cx, h))
    people.sort()  # farther (higher feet) first, so nearer people occlude them
    occupied = np.zeros((height, width), np.uint8)
    masks = []
    for feet, cx, h in reversed(people):  # nearest first: each visible mask excludes those in front
        m, parts = figure_mask(rng, width, height, cx, feet, h)
        visible = m & ~occupied
        paint_figure(img, rng, parts, visible)
        occupied |= m
        masks.append(visible)
    if rng.random() < 0.35:  # a pillar in front splits someone into two parts
        x0 = int(rng.integers(0, width - 8))
        pillar = np.zeros((height, width), np.uint8)
        pillar[:, x0:x0 + int(rng.integers(6, width // 10))] = 255
        img[pillar > 0] = _color(rng, 40, 200)
        masks = [m & ~pillar for m in masks]
    anns = [{"segmentation": polys, "iscrowd": 0} for m in masks if (polys := polygons_from_mask(m))]
    if rng.random() < 0.12:  # a crowd of tiny far-away figures, annotated as one crowd RLE
        crowd = np.zeros((height, width), np.uint8)
        base_y = rng.uniform(0.35, 0.6) * height
        for _ in range(int(rng.integers(5, 10))):
            m, parts = figure_mask(rng, width, height, rng.uniform(0.2, 0.8) * width, base_y + rng.uniform(-4, 4),
                                   rng.uniform(10, 18))
            paint_figure(img, rng, parts, m & ~occupied)
            crowd |= m & ~occupied
        anns.append({"segmentation": uncompressed_rle(crowd), "iscrowd": 1})
    image = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.05:  # COCO has grayscale photos too
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return image, anns


def make_sample_dataset(out_dir: str | Path, seed: int, n_images: int, width: int, height: int) -> dict:
    """Write `n_images` scenes as images/*.jpg plus instances.json (COCO format) under out_dir."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id in range(1, n_images + 1):
        image, anns = make_scene(seed, image_id, width, height)
        gray = bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))
        file_name = f"{image_id:012d}.jpg"
        buf = encode_jpeg(image[..., 0] if gray else image, JPEG_QUALITY, f"make-sample: {file_name}")
        atomic_write_bytes(out_dir / "images" / file_name, buf.tobytes())
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                       "coco_split": "train2017", "coco_url": "", "license": 0})
        for a in anns:
            ann = _annotation(a["segmentation"], height, width, len(annotations) + 1, image_id, a["iscrowd"])
            if ann:
                annotations.append(ann)
    instances = {"info": {"description": "rsdetect embedded default (synthetic scenes)", "seed": seed},
                 "licenses": [{"id": 0, "name": "generated by rsdetect", "url": ""}],
                 "images": images, "annotations": annotations, "categories": [PERSON_CATEGORY]}
    atomic_write_text(out_dir / "instances.json", json.dumps(instances, sort_keys=True))
    return {"images": len(images), "annotations": len(annotations),
            "crowd": sum(a["iscrowd"] for a in annotations)}
