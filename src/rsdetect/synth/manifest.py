"""The synthesized set's manifest (one row per image: its split, label and the motion that made it) and the split by
photo that every stage shares. Its own module: most stages read the manifest, and none of them should rerun when the
synthesis code changes."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

MANIFEST_FIELDS = ["path", "label", "split", "source", "pair_id", "image_id", "ann_id", "kind", "readout", "speed",
                   "direction", "turn", "amplitude", "cycles", "phase", "t_star", "max_disp_px", "rigid_px"]

def split_images(images: list[dict], seed: int, val_fraction: float, test_fraction: float) -> dict[int, str]:
    """Assign each photo to exactly one split. COCO val2017 photos go to test; the rest are shuffled by the seed."""
    test = sorted(im["id"] for im in images if im.get("coco_split") == "val2017")
    rest = np.array(sorted(im["id"] for im in images if im.get("coco_split") != "val2017"), dtype=np.int64)
    rest = rest[np.random.default_rng([seed, 7]).permutation(len(rest))]
    n_val = int(round(len(rest) * val_fraction))
    n_test = 0 if test else int(round(len(rest) * test_fraction))
    split = {int(i): "test" for i in test}
    split.update({int(i): "test" for i in rest[:n_test]})
    split.update({int(i): "val" for i in rest[n_test:n_test + n_val]})
    split.update({int(i): "train" for i in rest[n_test + n_val:]})
    return split


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of manifest.csv with numeric fields parsed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["label"] = int(r["label"])
        r["image_id"] = int(r["image_id"])
        r["max_disp_px"] = float(r["max_disp_px"])
    return rows
