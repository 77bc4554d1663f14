"""An independent test set: rolling-shutter pairs made with a published recipe, not our own synthesis.

Recipe: Rengarajan, Balaji and Rajagopalan, "Unrolling the Shutter: CNN to Correct Motion Distortions",
CVPR 2017. Their synthetic RS images come from camera motion with a per-row horizontal translation and an
in-plane rotation, both polynomial in the row index, applied to the central 256 x 256 of a 356 x 356 crop.

What this module implements, exactly:

1. The photo's central short-side square is resized to external.window (356) px: exact halvings (box filter)
   then one linear step (data.shrink_square); smaller photos are upscaled linearly.
2. Per output row, y = row / (size - 1) in [0, 1] (0 = top row of the 256 crop, read first), the camera pose is
   tx(y) = a1*y + a2*y^2 (px, horizontal) and theta(y) = b1*y + b2*y^2 (degrees, in-plane, about the crop
   centre); so the top row has the identity pose, as in the paper (motion relative to the first row).
   a1, a2, b1, b2 are drawn uniformly from external.translation_linear, translation_quadratic,
   rotation_linear and rotation_quadratic: by default [-57, 57] px, [-14, 14] px, [-2, 2] deg, [-1, 1] deg.
3. The RS image: one backward cv2.remap (bilinear) of the 356 window, computed only for the central 256 crop:
   output pixel p of row y samples the window at q = R(-theta(y)) (p - c - (tx(y), 0)) + c. Samples beyond
   the window (only for the largest draws) reflect at its border.
4. The label-0 twin (global shutter): the same window through the same remap with one rigid pose, the row
   motion at an instant t* drawn uniformly from external.twin_time ([0, 1]): same resampling as the RS image,
   no row dependence. twin_time [0, 0] gives the paper's ground truth (first-row pose: the plain crop).
5. shear_px: the displacement p - q of each row's centre-column point (the same map), and its diameter over
   the 256 rows (shutter.shear_extent): the largest distance between two rows' displacements.

The coefficient ranges are not copied from the paper: they were chosen so that the shear across the frame
reproduces the distribution measured on their data (median about 27 px, 10th-90th percentile 6-54 px).
Translation dominates: the rotation is in-plane as in the recipe but small (at most 3 degrees at the bottom
row), because rotation ranges of +-5 and +-3 degrees lifted the 10th percentile to about 7.7 px. Over 4000 draws
at the defaults (rng seed 2017): median 28.3 px, 10th percentile 6.6 px, 90th percentile 53.9 px, 3.4% under
3 px (tests/test_external.py measures and prints it). No draw is rejected for a small shear (nothing in the
recipe as described asks for it); the evaluation's recall by shear bin shows those pairs apart. The source
photos are our own test-split photos, people or not: the motion is the camera's.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import ExternalParams
from rsdetect.errors import RsdetectError
from rsdetect.io import staged_dir, write_json
from rsdetect.preprocess import encode_jpeg
from rsdetect.shutter import shear_extent
from rsdetect.synth.twins import SkipImage, photo_tasks, read_photo, shrink_square

KIND = "rengarajan"
SPLIT = "external"
EXTERNAL_FIELDS = ["path", "label", "split", "pair_id", "image_id", "kind", "max_disp_px", "a1", "a2", "b1", "b2",
                   "t_star"]
STREAM = 2017  # salts the per-pair seeds so they never repeat our own synthesis' streams for the same photo


@dataclass(frozen=True)
class CameraMotion:
    """Row-polynomial camera motion: tx(y) = a1 y + a2 y^2 px, theta(y) = b1 y + b2 y^2 degrees, y in [0, 1]."""
    a1: float
    a2: float
    b1: float
    b2: float
    t_star: float  # the twin's instant

    def pose(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Translation (px) and rotation (radians) at normalised rows y."""
        y = np.asarray(y, np.float64)
        return self.a1 * y + self.a2 * y * y, np.deg2rad(self.b1 * y + self.b2 * y * y)


def draw_motion(rng: np.random.Generator, p: ExternalParams) -> CameraMotion:
    """One motion: each coefficient uniform in its range, then the twin's instant."""
    return CameraMotion(*(float(rng.uniform(*r)) for r in (p.translation_linear, p.translation_quadratic,
                                                             p.rotation_linear, p.rotation_quadratic, p.twin_time)))


def centre_window(photo_bgr: np.ndarray, window: int) -> np.ndarray:
    """The photo's central short-side square resized to window x window (equal to resize-then-centre-crop)."""
    h, w = photo_bgr.shape[:2]
    m = min(h, w)
    y0, x0 = (h - m) // 2, (w - m) // 2
    return shrink_square(photo_bgr[y0:y0 + m, x0:x0 + m], window)


def source_points(x: np.ndarray, y: np.ndarray, tx: np.ndarray, theta: np.ndarray,
                  centre: float) -> tuple[np.ndarray, np.ndarray]:
    """Backward map: where window pixel (x, y) posed by (tx, theta) about (centre, centre) comes from."""
    u, v = x - centre - tx, y - centre
    cos, sin = np.cos(theta), np.sin(theta)
    return cos * u + sin * v + centre, -sin * u + cos * v + centre


def _remap(window: np.ndarray, tx: np.ndarray, theta: np.ndarray, size: int) -> np.ndarray:
    """The central size x size crop of `window` with row r posed by (tx[r], theta[r]): one bilinear remap."""
    margin = (window.shape[0] - size) // 2
    centre = (window.shape[0] - 1) / 2
    x = np.arange(margin, margin + size, dtype=np.float64)[None, :]
    y = np.arange(margin, margin + size, dtype=np.float64)[:, None]
    map_x, map_y = source_points(x, y, tx[:, None], theta[:, None], centre)
    return cv2.remap(window, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)


def row_displacements(motion: CameraMotion, window: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) per output row: p - q for the row's centre-column point, from the very map the warp uses."""
    centre = (window - 1) / 2
    tx, theta = motion.pose(np.arange(size) / (size - 1))
    y = (window - size) // 2 + np.arange(size, dtype=np.float64)
    qx, qy = source_points(np.full(size, centre), y, tx, theta, centre)
    return centre - qx, y - qy


def render_pair(window: np.ndarray, motion: CameraMotion, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """RS image, its rigid twin (both size x size) and the RS shear in px, from a prepared square window."""
    rows = np.arange(size) / (size - 1)
    tx, theta = motion.pose(rows)
    rs = _remap(window, tx, theta, size)
    tx0, theta0 = motion.pose(np.array([motion.t_star]))
    gs = _remap(window, np.full(size, tx0[0]), np.full(size, theta0[0]), size)
    return rs, gs, shear_extent(*row_displacements(motion, window.shape[0], size))


def rengarajan_pair(photo_bgr: np.ndarray, rng: np.random.Generator,
                    params: ExternalParams) -> tuple[np.ndarray, np.ndarray, float]:
    """(rs, clean, shear_px): one RS image and its global-shutter twin from a BGR photo, deterministic from rng."""
    return render_pair(centre_window(photo_bgr, params.window), draw_motion(rng, params), params.size)


def _photo_rows(image_id: int, photo: np.ndarray, stage: Path, seed: int, p: ExternalParams) -> list[dict]:
    """All pairs of one decoded photo written as JPEGs; their manifest rows."""
    window = centre_window(photo, p.window)  # shared by the photo's pairs: resized once
    rows = []
    for index in range(p.pairs_per_photo):
        motion = draw_motion(np.random.default_rng([seed, STREAM, image_id, index]), p)
        rs, gs, shear = render_pair(window, motion, p.size)
        pair_id = f"{image_id:012d}_{index}"
        base = {"split": SPLIT, "pair_id": pair_id, "image_id": image_id, "kind": KIND,
                "max_disp_px": round(shear, 3), **{k: round(v, 4) for k, v in asdict(motion).items()}}
        for label, img, tag in ((1, rs, "rs"), (0, gs, "gs")):
            rel = f"images/{pair_id}_{tag}.jpg"
            buf = encode_jpeg(img, p.jpeg_quality, f"external: {rel}")
            buf.tofile(stage / rel)  # plain write: the stage folder replaces out_dir only when complete
            rows.append({**base, "path": rel, "label": label})
    return rows


def make_external(instances_path: str | Path, out_dir: str | Path, seed: int,
                  split_fractions: tuple[float, float], params: ExternalParams) -> dict:
    """The external test set from the photos our own split puts in test: images/, manifest.csv, report.json.

    split_fractions: (synthesize.val_fraction, synthesize.test_fraction), so that data.photo_tasks with the same
    seed gives exactly our split (same checked entries, same split) and no photo the model trained or was
    validated on is used. Malformed image entries belong to no split: they are counted in skipped_items.
    """
    instances_path, out_dir = Path(instances_path), Path(out_dir)
    tasks, inst = photo_tasks(instances_path, seed, split_fractions)
    photos = [t for t in tasks if t.split == "test"]
    rows, skipped = [], list(inst.skipped_images)
    with staged_dir(out_dir) as stage:
        (stage / "images").mkdir()
        for task in photos:
            try:
                photo = read_photo(instances_path.parent, task.file)
            except SkipImage as exc:
                skipped.append({"image_id": task.image_id, "file": task.file, "reason": str(exc)})
                continue
            rows += _photo_rows(task.image_id, photo, stage, seed, params)
        if not rows:
            reasons = "; ".join(f"{n} x {r}" for r, n in Counter(s["reason"] for s in skipped).most_common(3))
            raise RsdetectError(f"{instances_path}: no test-split photo gave an external pair "
                                f"({len(photos)} test photos, {len(skipped)} skipped"
                                f"{': ' + reasons if reasons else ''})")
        rows.sort(key=lambda r: (r["pair_id"], r["label"]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EXTERNAL_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (stage / "manifest.csv").write_text(buf.getvalue())
        shear = np.array([r["max_disp_px"] for r in rows if r["label"] == 1])
        report = {
            "recipe": "Rengarajan, Balaji, Rajagopalan, CVPR 2017: row-quadratic tx and in-plane rotation",
            "photos": len(photos), "photos_not_test": len(tasks) - len(photos),
            "pairs": len(shear), "skipped": len(skipped),
            "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)), "skipped_items": skipped,
            "shear_px": {f"p{q}": round(float(np.percentile(shear, q)), 3) for q in (10, 50, 90)},
        }
        write_json(stage / "report.json", report)
    return report
