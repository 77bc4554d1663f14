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


class HeldOutPhotos(list):
    """held_out_photos' list of (image path, image entry, person annotations), with what was left out and why:
    `excluded` (photos listed by an --exclude file) and `skipped_entries` (entries the instances checks refused,
    {"image_id", "file", "reason"}); check_photos counts both in its report."""

    def __init__(self, photos: list, excluded: int, skipped_entries: list[dict]) -> None:
        super().__init__(photos)
        self.excluded, self.skipped_entries = excluded, skipped_entries


def _exclude_file(path: str | Path, base: Path | None) -> Path:
    """An --exclude file: as given, or (relative and absent from the working folder) under `base`, the project
    folder the default --exclude is relative to; one line naming it if it is in neither."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and base is not None and (base / path).is_file():
        return base / path
    if not path.is_file():
        where = f" (nor under {base})" if base is not None and not path.is_absolute() else ""
        raise RsdetectError(f"--exclude {path}: no such instances file{where}; give the instances file of the photos "
                            f"the model may have trained on, or --exclude with no file to exclude none")
    return path


def excluded_ids(path: Path) -> set:
    """The image ids an --exclude instances file lists (it may list images only, no annotations); one line
    naming it if it is not JSON with an 'images' list."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RsdetectError(f"--exclude {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise RsdetectError(f"--exclude {path}: not an instances file (needs an 'images' list)")
    return {im.get("id") for im in data["images"] if isinstance(im, dict)}


def held_out_photos(folders: list[str | Path], exclude: list[str | Path],
                    base: str | Path | None = None) -> HeldOutPhotos:
    """(image path, image entry, person annotations) of every photo in `folders` whose COCO id is in no
    `exclude` instances file; relative `exclude` paths missing from the working folder are looked up under `base`
    (the project folder: the default --exclude is relative to it). Entries left out are counted on the result."""
    excluded: set = set()
    for path in exclude:
        excluded |= excluded_ids(_exclude_file(path, Path(base) if base is not None else None))
    out, skipped, n_excluded = [], [], 0
    for folder in map(Path, folders):
        inst = checked_instances(instances_file(folder))  # the entry checks and person rule synthesis uses
        skipped += [{**entry, "folder": str(folder)} for entry in inst.skipped_images]
        kept = [im for im in inst.images if im["id"] not in excluded]
        n_excluded += len(inst.images) - len(kept)
        out += [(folder / "images" / im["file_name"], im, inst.people.get(im["id"], [])) for im in kept]
    return HeldOutPhotos(out, n_excluded, skipped)


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
            "excluded": getattr(photos, "excluded", 0), "skipped_entries": getattr(photos, "skipped_entries", []),
            "pairs_metrics": binary_metrics(y, prob, threshold), "breakdown": recall_breakdown(rows, prob, threshold),
            "ordinary_photos_flagged": float(np.mean(whole >= threshold)), "ordinary_photos": len(whole),
            "twins_flagged": float(np.mean(prob[y == 0] >= threshold))}
