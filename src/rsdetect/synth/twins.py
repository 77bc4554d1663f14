"""Synthesis of rolling-shutter / global-shutter twin pairs from COCO-format photos (split by photo: synth.manifest).

Each usable photo gives synthesize.pairs_per_photo pairs (a person and a motion drawn for each). The RS image
and its control twin go through the same cut, inpaint, paste, crop, resize and JPEG steps; only the row
dependence of the displacement differs. Each sample's randomness derives from (seed, image id, annotation id,
pair index): byte-identical reruns.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import signal
import threading
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from rsdetect.config import KINDS, SynthParams
from rsdetect.datasets.instances import Instances, SkipImage, checked_instances, decode_image, person_polygons
from rsdetect.errors import RsdetectError
from rsdetect.io import staged_dir, write_json
from rsdetect.limits import max_pixels, set_max_pixels
from rsdetect.preprocess import (  # one resize for synthesis and inference: same scale, same filter
    encode_jpeg,
    shrink_square,
)
from rsdetect.shutter import (
    Motion,
    displacement,
    fill_person_hole,
    global_rows,
    move_person,
    rolling_rows,
    shear_extent,
    warp_rows,
)
from rsdetect.synth.manifest import MANIFEST_FIELDS, split_images

# Motion redraws before a photo is a counted skip: a draw falls under min_visible_px only for slow motions, so
# a dozen misses in a row means the photo (a tiny person, a short readout range) cannot give a visible shear.
MAX_TRIES = 12


@dataclass(frozen=True)
class Task:
    image_id: int
    file: str
    split: str
    anns: list


def person_rle(polygons: list[list[float]], height: int, width: int) -> dict | None:
    """The polygons' mask as one RLE via pycocotools (all parts merged, non-convex kept), or None if empty."""
    if not polygons:
        return None
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return rle if mask_utils.area(rle) > 0 else None


FRAME_KINDS = ("pan", "vibration")  # distortions of the whole frame: they need no person


def draw_motion(rng: np.random.Generator, p: SynthParams, with_person: bool = True,
                scale: float = 1.0) -> tuple[Motion, float]:
    """Draw a motion (kind from the params' mix; camera motion only for a photo without a usable person) and a
    readout time. `scale` multiplies every magnitude (speed, turn, amplitude): > 1 is the easy start of a curriculum."""
    names = [k for k in KINDS if p.kinds.get(k, 0) > 0 and (with_person or k in FRAME_KINDS)]
    if not names:
        raise SkipImage("no usable person, and synthesize.kinds has no camera motion (pan, vibration)")
    weights = np.array([p.kinds[k] for k in names], np.float64)
    kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    readout = float(rng.uniform(*p.readout))
    direction = float(rng.uniform(0, 2 * np.pi))
    if kind == "object":
        return Motion(kind, speed=scale * float(rng.uniform(*p.object_speed)), direction=direction,
                      turn=scale * float(rng.uniform(*p.object_turn))), readout
    if kind == "pan":  # cameras pan mostly sideways
        speed = scale * float(rng.uniform(*p.pan_speed))  # drawn before the direction: the draws keep their order
        return Motion(kind, speed=speed,
                      direction=float(rng.choice([0, np.pi]) + rng.normal(0, p.pan_direction_jitter))), readout
    return Motion(kind, amplitude=scale * float(rng.uniform(*p.vibration_amplitude)), direction=direction,
                  cycles=float(rng.uniform(*p.vibration_cycles)), phase=float(rng.uniform(0, 2 * np.pi))), readout


def crop_window(bbox: tuple[float, float, float, float], height: int, width: int, side: int) -> tuple[int, int]:
    """Top-left of a side x side window centred on the person's box, kept inside the image."""
    x, y, w, h = bbox
    x0 = int(round(min(max(x + w / 2 - side / 2, 0), width - side)))
    y0 = int(round(min(max(y + h / 2 - side / 2, 0), height - side)))
    return x0, y0


def window_alpha(polygons: list[list[float]], x0: int, y0: int, m: int, side: int) -> np.ndarray:
    """The person's soft mask on the window: the polygons rasterised by pycocotools at twice the window's
    resolution, then halved (antialiased edges), instead of decoding the full photo's mask and shrinking it."""
    scale = 2 * side / m
    # x and y swapped: pycocotools returns column-major masks, so the transpose is the mask, row-major, uncopied.
    swapped = [list(((np.asarray(p, np.float64).reshape(-1, 2) - (x0, y0)) * scale)[:, ::-1].ravel()) for p in polygons]
    mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(swapped, 2 * side, 2 * side))).T
    return cv2.resize(mask * np.uint8(255), (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def square_window(image: np.ndarray, polygons: list[list[float]], bbox: tuple[float, float, float, float],
                  side: int) -> tuple[np.ndarray, np.ndarray]:
    """The short-side square centred on the person's box, resized to side x side, and the person's soft mask on it.

    Cropping before resizing only resamples the pixels that are kept.
    """
    h, w = image.shape[:2]
    m = min(h, w)
    x0, y0 = crop_window(bbox, h, w, m)
    alpha = window_alpha(polygons, x0, y0, m, side) if polygons else np.zeros((side, side), np.float32)
    return shrink_square(image[y0:y0 + m, x0:x0 + m], side), alpha


def make_pair(image: np.ndarray, polygons: list[list[float]], bbox: tuple[float, float, float, float], motion: Motion,
              readout: float, t_star: float, size: int,
              min_shear: float = 0.0) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """Rolling-shutter image and its global-shutter twin (both size x size), the effective shear and the rigid shift.

    Scale so the window is size + 2*margin, apply the per-row (RS) or constant (twin) displacement through
    the same steps, and crop the margin away: both images see the same resampling, fill and crop.
    None if the effective shear is below `min_shear` (checked before the costly fill and paste).
    """
    frame_kind = motion.kind != "object"
    probe_dx, probe_dy = rolling_rows(motion, size, readout)
    margin = int(math.ceil(np.abs(np.concatenate([probe_dx, probe_dy])).max())) + 1 if frame_kind else 0
    side = size + 2 * margin
    # Rows are timed on the output frame: row y of the window is output row y - margin.
    t_rows = readout * (np.arange(side) - margin) / max(size - 1, 1)
    rs_dx, rs_dy = displacement(motion, t_rows)
    gs_dx, gs_dy = global_rows(motion, side, t_star)
    if frame_kind:
        extent = shear_extent(rs_dx[margin:margin + size], rs_dy[margin:margin + size])
        if extent < min_shear:
            return None
    window, alpha = square_window(image, polygons, bbox, side)
    if not frame_kind:  # only the rows the moved person occupies can show its shear
        rs_alpha = warp_rows(alpha, rs_dx, rs_dy, border=cv2.BORDER_CONSTANT)
        extent = shear_extent(rs_dx, rs_dy, np.flatnonzero((rs_alpha > 0.5).any(axis=1)))
        if extent < min_shear:
            return None
    rigid = float(np.hypot(gs_dx[0], gs_dy[0]))
    if frame_kind:  # only the output crop is computed: the margin only feeds the warp
        crop = (margin, margin, size, size)
        return warp_rows(window, rs_dx, rs_dy, box=crop), warp_rows(window, gs_dx, gs_dy, box=crop), extent, rigid
    background = fill_person_hole(window, alpha)
    gs_alpha = warp_rows(alpha, gs_dx, gs_dy, border=cv2.BORDER_CONSTANT)
    rs = move_person(window, background, rs_alpha, rs_dx, rs_dy)
    gs = move_person(window, background, gs_alpha, gs_dx, gs_dy)
    return rs, gs, extent, rigid


def usable_people(anns: list[dict], height: int, width: int, p: SynthParams) -> list[tuple]:
    """(annotation, polygons, bbox) of each person big enough at output scale; areas and boxes from the RLEs, never
    decoded (only the chosen person is rasterised, on the window)."""
    scale2 = (p.size / min(height, width)) ** 2
    usable = []
    for ann in anns:
        polygons = person_polygons(ann)
        rle = person_rle(polygons, height, width)
        if rle is not None and mask_utils.area(rle) * scale2 >= p.min_person_area:
            usable.append((ann, polygons, tuple(mask_utils.toBbox(rle))))
    return usable


def read_photo(root: str | Path, file: str) -> np.ndarray:
    """A dataset photo as 8-bit BGR; SkipImage (a counted reason) if it cannot be read or is too small."""
    try:
        data = (Path(root) / file).read_bytes()
    except OSError as exc:
        raise SkipImage(f"image cannot be read ({exc.strerror})") from None
    return decode_image(data, file)  # SkipImage too for an image outside the pixel limits (rsdetect.limits)


def draw_pair(image: np.ndarray, usable: list[tuple], rng: np.random.Generator, p: SynthParams,
              scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """One RS image, its global-shutter twin and their manifest fields, all drawn from `rng`.

    A person is chosen among `usable`; a photo without one gets camera motion only (pan, vibration).
    SkipImage if the effective shear stays below synthesize.min_visible_px for MAX_TRIES draws.
    """
    if usable:
        ann, polygons, bbox = usable[int(rng.integers(len(usable)))]
    else:
        h, w = image.shape[:2]
        ann, polygons, bbox = {"id": 0}, [], (0.0, 0.0, float(w), float(h))
    for _ in range(MAX_TRIES):
        motion, readout = draw_motion(rng, p, with_person=bool(usable), scale=scale)
        t_star = float(rng.uniform(0, readout))
        pair = make_pair(image, polygons, bbox, motion, readout, t_star, p.size, p.min_visible_px)
        if pair is not None:
            rs, gs, extent, rigid = pair
            fields = {"ann_id": int(ann["id"]), "readout": round(readout, 4), "t_star": round(t_star, 4),
                      "max_disp_px": round(extent, 3), "rigid_px": round(rigid, 3),
                      **{k: round(v, 4) if isinstance(v, float) else v for k, v in vars(motion).items()}}
            return rs, gs, fields
    raise SkipImage(f"effective displacement stays below synthesize.min_visible_px ({p.min_visible_px}) "
                    f"after {MAX_TRIES} draws")


def photo_source(file: str) -> str:
    """The part of a merged dataset a photo comes from: images/<source>/<name> (drawn, real), else "photos"."""
    parts = Path(file).parts
    return parts[1] if len(parts) > 2 else "photos"


def synthesize_photo(task: Task, root: str, out_dir: str, seed: int, p: SynthParams) -> list[dict]:
    """One photo -> synthesize.pairs_per_photo RS/GS pairs written as JPEGs; returns their manifest rows.

    Raises SkipImage with a reason (a photo that cannot give every pair is skipped whole).
    """
    image = read_photo(root, task.file)
    height, width = image.shape[:2]
    usable = usable_people(task.anns, height, width, p)
    rows = []
    for index in range(p.pairs_per_photo):
        rs, gs, fields = draw_pair(image, usable, np.random.default_rng([seed, task.image_id, index]), p)
        pair_id = f"{task.image_id:012d}_{index}"
        base = {"split": task.split, "source": photo_source(task.file), "pair_id": pair_id, "image_id": task.image_id,
                **fields}
        for label, img, tag in ((1, rs, "rs"), (0, gs, "gs")):
            rel = f"images/{task.split}/{pair_id}_{tag}.jpg"
            buf = encode_jpeg(img, p.jpeg_quality, f"synthesize: {rel}")
            buf.tofile(Path(out_dir) / rel)  # plain write: out_dir is a staging folder renamed into place when complete
            rows.append({**base, "path": rel, "label": label})
    return rows


def _worker_init(limit: int) -> None:
    cv2.setNumThreads(1)  # parallelism comes from processes; nested threads only contend
    set_max_pixels(limit)  # a spawned worker starts with the default decode limit: it gets the parent's


def _run_task(args: tuple) -> tuple[int, str, list[dict] | str]:
    task, root, out_dir, seed, p = args
    try:
        return task.image_id, task.file, synthesize_photo(task, root, out_dir, seed, p)
    except SkipImage as exc:
        return task.image_id, task.file, str(exc)


def run_tasks(jobs: list[tuple], workers: int):
    """Yield the jobs' results in order: in this process for one worker (no start-up cost), else on a process pool."""
    if workers == 1:
        yield from map(_run_task, jobs)
        return
    # spawn, not fork: a fork after OpenCV's thread pool has started can deadlock the children. An executor,
    # not a Pool: a worker that dies (killed for memory, or cannot start) raises instead of hanging forever.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(max_pixels(),)) as pool:
        # Ctrl-C in a terminal reaches every process of the group, and each worker printed a KeyboardInterrupt
        # traceback. Workers start (on map's first submits) with SIGINT ignored, which they inherit and Python then
        # keeps; the main process alone stops the run: closing this generator cancels the queued photos and the
        # pool's exit waits for the running ones.
        main = threading.current_thread() is threading.main_thread()  # only there can handlers be set
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            results = pool.map(_run_task, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers))))
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        try:
            yield from results
        except BrokenProcessPool:
            raise RsdetectError("synthesize: a worker process died (killed for memory, or could not start); "
                                "set synthesize.workers: 1 to run in one process and see why") from None


def photo_tasks(instances_path: str | Path, seed: int, fractions: tuple[float, float]) -> tuple[list[Task], Instances]:
    """Every valid photo of a COCO-format dataset with its split and its well-formed person annotations, ordered
    by id; and the checked instances, whose skipped_images / skipped_annotations say what was left out and why.

    The one entry point of every reader of the dataset (synthesis, training pairs, the external set), so each
    gets the same checks (rsdetect.datasets.instances.checked_instances) and the same split. fractions:
    (synthesize.val_fraction, synthesize.test_fraction), the only params the split reads.
    """
    inst = checked_instances(instances_path)
    split = split_images(inst.images, seed, *fractions)
    return [Task(im["id"], f"images/{im['file_name']}", split[im["id"]], inst.people.get(im["id"], []))
            for im in inst.images], inst


def _no_sample_message(instances_path: Path, skipped: list[dict]) -> str:
    """The one-line error when no photo gave a sample: the reasons themselves, since no report is written
    (the previous output stays as it was)."""
    reasons = Counter(s["reason"] for s in skipped).most_common(3)
    listed = "; ".join(f"{n} x {reason}" for reason, n in reasons) or "the dataset has no image entry"
    more = len(Counter(s["reason"] for s in skipped)) - len(reasons)
    return (f"{instances_path}: no photo gave a sample ({len(skipped)} skipped: {listed}"
            f"{f'; and {more} other reasons' if more > 0 else ''})")


def synthesize(instances_path: str | Path, out_dir: str | Path, seed: int, p: SynthParams) -> dict:
    """Make the RS/GS dataset from a COCO-format folder: images/, manifest.csv and report.json under out_dir."""
    instances_path, out_dir = Path(instances_path), Path(out_dir)
    tasks, inst = photo_tasks(instances_path, seed, (p.val_fraction, p.test_fraction))
    workers = p.workers or os.cpu_count() or 1
    rows, skipped = [], list(inst.skipped_images)
    with staged_dir(out_dir) as stage:
        for split_name in sorted({t.split for t in tasks}):
            (stage / "images" / split_name).mkdir(parents=True)
        jobs = [(t, str(instances_path.parent), str(stage), seed, p) for t in tasks]
        # closing(): on Ctrl-C the pool is shut down (queued photos cancelled, running ones finished) before
        # staged_dir removes the staging folder; left to the garbage collector, workers still wrote into it after
        # its removal and a .synth.partial.* folder stayed behind.
        with contextlib.closing(run_tasks(jobs, workers)) as results:
            for image_id, file, result in tqdm(results, total=len(jobs), desc="synthesize", unit="photo"):
                if isinstance(result, str):
                    skipped.append({"image_id": image_id, "file": file, "reason": result})
                else:
                    rows.extend(result)
        if not rows:
            raise RsdetectError(_no_sample_message(instances_path, skipped))
        rows.sort(key=lambda r: ({"train": 0, "val": 1, "test": 2}[r["split"]], r["pair_id"], r["label"]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (stage / "manifest.csv").write_text(buf.getvalue())
        counts = Counter((r["split"], r["label"]) for r in rows)
        report = {
            "photos": len(tasks) + len(inst.skipped_images), "pairs": len(rows) // 2, "skipped": len(skipped),
            "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)),
            "skipped_items": skipped,
            "skipped_annotations": len(inst.skipped_annotations),
            "skipped_annotations_by_reason": dict(Counter(s["reason"] for s in inst.skipped_annotations)),
            "skipped_annotation_items": inst.skipped_annotations,
            "samples": {s: {"rs": counts[(s, 1)], "gs": counts[(s, 0)]} for s in ("train", "val", "test")},
            "kinds": dict(Counter(r["kind"] for r in rows if r["label"] == 1)),
        }
        write_json(stage / "report.json", report)
    return report
