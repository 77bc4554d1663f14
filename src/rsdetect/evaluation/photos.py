"""How a trained model does on real photographs it never saw: `rsdetect check-photos`.

Two numbers a user cares about, from COCO-format folders of real photos (for example ../shared's samples), minus
every photo the pipeline could have trained on (`--exclude` instances files):
- detection: RS/GS twin pairs drawn from each photo by the synthesis (no augmentation), ROC AUC and recall at the
  operating threshold, by kind and shear bin;
- false alarms: the untouched photos themselves, each scored whole (tiles at the training scale, max over tiles,
  as `scan` does), and the fraction flagged at the operating threshold.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import SynthParams
from rsdetect.datasets.embedded import instances_file
from rsdetect.datasets.instances import checked_instances
from rsdetect.errors import RsdetectError
from rsdetect.evaluation.metrics import binary_metrics, recall_breakdown
from rsdetect.synth.twins import SkipImage, decode_image, draw_pair, usable_people

CHECK_TAG = 0xC0C0  # keeps these draws apart from the fixed sets' and the training stream's


def held_out_photos(folders: list[str | Path], exclude: list[str | Path]) -> list[tuple[Path, dict, list[dict]]]:
    """(image path, image entry, person annotations) of every photo in `folders` whose COCO id is in no
    `exclude` instances file."""
    excluded = set()
    for path in exclude:
        # an exclude file may list images only (no annotations): read its ids, not a whole instances file
        excluded |= {im.get("id") for im in json.loads(Path(path).read_text())["images"] if isinstance(im, dict)}
    out = []
    for folder in map(Path, folders):
        inst = checked_instances(instances_file(folder))  # the entry checks and person rule synthesis uses
        out += [(folder / "images" / im["file_name"], im, inst.people.get(im["id"], []))
                for im in inst.images if im["id"] not in excluded]
    return out


def check_photos(score_fn, image_size: int, threshold: float, photos: list[tuple[Path, dict, list[dict]]],
                 seed: int, synth: SynthParams, pairs_per_photo: int) -> dict:
    """Detection on twin pairs and false alarms on the whole photos; see the module docstring."""
    from rsdetect.preprocess import decode, encode_jpeg, score_frames

    rows, images, originals, skipped = [], [], [], 0
    for path, im, anns in photos:
        try:
            photo = decode_image(path.read_bytes(), str(path))
        except (OSError, SkipImage):
            skipped += 1
            continue
        originals.append(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB))
        height, width = photo.shape[:2]
        usable = usable_people(anns, height, width, synth)
        for k in range(pairs_per_photo):
            try:
                rs, gs, fields = draw_pair(photo, usable, np.random.default_rng([seed, CHECK_TAG, im["id"], k]), synth)
            except SkipImage:
                continue
            for label, img in ((1, rs), (0, gs)):  # JPEG-coded like the fixed sets
                buf = encode_jpeg(img, synth.jpeg_quality, f"check-photos: pair of photo {im['id']}")
                images.append(decode(buf.tobytes()))
                rows.append({**fields, "label": label, "image_id": im["id"], "source": "photos"})
    if not rows:
        raise RsdetectError("check-photos: no photo gave a pair")
    prob, _ = score_frames(score_fn, images, image_size)
    whole, _ = score_frames(score_fn, originals, image_size)
    y = np.array([r["label"] for r in rows])
    return {"photos": len(originals), "skipped": skipped, "pairs": len(rows) // 2, "threshold": threshold,
            "pairs_metrics": binary_metrics(y, prob, threshold), "breakdown": recall_breakdown(rows, prob, threshold),
            "ordinary_photos_flagged": float(np.mean(whole >= threshold)), "ordinary_photos": len(whole),
            "twins_flagged": float(np.mean(prob[y == 0] >= threshold))}
