"""Does the single-frame CNN add to the video evidence when it looks at movers at native scale? A development
experiment (issue 21, item 4).

The `video` stage's clips (src/video.py: rsdetect.synth.clips.render_twins from the test split's photos; person,
vibration and pan, each rolling shutter with its global-shutter twin) are rendered with --seeds rendering seeds
(the first is the stage's own). For every frame:
  evidence  the video evidence's probability with the readout NOT told (src/video.py's clip_rows, the path `scan`
            and `watch` run);
  crops     the CNN's probability on model-size crops taken at native scale: centred on each moving region that
            MotionMeter measures (FrameMotion.regions; a region larger than a crop is covered by crops, as
            rsdetect.preprocess tiles a frame), max over the frame's crops; a person frame with no region has no
            crop score. For the camera clips the region is the whole frame (native-scale crops covering it);
  whole     the CNN on the whole frame downscaled (rsdetect.preprocess.score_frames: today's still path);
  fused     a logistic regression on [evidence probability, crop logit (0 where none), has a crop] (fused+crops;
            fused+whole: the same with the whole-frame CNN), fitted per kind on half the twin pairs and scored on
            the other half, then the halves swapped (2-fold, split by twin pair, never by frame), so every frame
            gets a held-out score.
ROC AUC (sklearn): rolling-shutter frames with true shear >= 2 px (src/video.py's VISIBLE_PX) against every frame
of the global-shutter twins; per kind, and per kind and photo source.

Because the labelled rolling-shutter frames are the faster ones, a score that only follows the motion ranks above
0.5 in that AUC; `twin` (twin_wins) compares each labelled frame with the same frame of its twin instead.

Measured 2026-12-06 (models/model.keras of the committed default; 8 clips per kind and source, twice the stage's,
seeds 20261124-26; mean over seeds, min-max; 2 shared CPU cores, 8.5 min):
  person  evidence 0.590 (0.568-0.609), fused+crops 0.656 (0.641-0.684): held-out gain +0.073, +0.033, +0.091;
          real photos: gain +0.000, -0.037, +0.049, crops twin 0.522 (chance); drawn scenes: gain +0.139, +0.106,
          +0.122, crops twin 0.700. Crops alone 0.613, whole frame 0.627 (twin 0.600 against 0.578).
  vibration, pan  evidence 0.969 / 0.952, fused+crops 0.970 / 0.951 (every gain within -0.027..+0.011); the CNN
          on real photos at chance (crops twin 0.541 / 0.493), on drawn scenes above it (0.811 / 0.902).
The CNN, on crops or on the whole frame alike, sees the shear on the drawn scenes (flat colours, sharp edges) and
not on real photos: the fusion's gain on person clips is the drawn scenes' alone, and none on real
photos, which real footage is. So the CNN stays out of the video fusion (docs/video.md).
Run: PYTHONPATH=src python experiments/cnn_mover_crops.py [--raw data/raw] [--model models/model.keras] [--seeds 2]
     [--clips-per-kind 4]     (the numbers above: --seeds 3 --clips-per-kind 8)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # src/video.py, the stage script whose clips and rows are reused

from rsdetect.config import load_params  # noqa: E402
from rsdetect.preprocess import Box, score_frames, score_tiled, tile_starts  # noqa: E402
from rsdetect.serve.loaders import load_model  # noqa: E402
from rsdetect.synth.clips import CLIP_KINDS, render_twins  # noqa: E402
from rsdetect.video.motion import MotionMeter  # noqa: E402
from video import CAMERA_KINDS, MAX_TRIES, VISIBLE_PX, clip_rows, test_photos  # noqa: E402

KINDS = ("person", *CAMERA_KINDS)
SOURCES = ("real", "drawn")


def spans(start: int, length: int, size: int, limit: int) -> list[int]:
    """Starts of `size`-px crops along one axis covering [start, start + length) at native scale, inside
    [0, limit): one centred crop for a span up to `size`, else tile_starts' evenly spaced cover."""
    if length <= size:
        return [int(np.clip(start + length // 2 - size // 2, 0, limit - size))]
    return [int(np.clip(start + s, 0, limit - size)) for s in tile_starts(length, size)]


def crops(rgb: np.ndarray, boxes: list[Box], size: int) -> tuple[np.ndarray, list[Box]]:
    """float32 (n, S, S, 3) native-scale crops covering each box (x, y, w, h), and each crop's box (score_tiled's
    input for one frame)."""
    h, w = rgb.shape[:2]
    at = [(x0, y0, size, size) for x, y, bw, bh in boxes
          for y0 in spans(y, bh, size, h) for x0 in spans(x, bw, size, w)]
    return np.stack([rgb[y0:y0 + size, x0:x0 + size] for x0, y0, *_ in at]).astype(np.float32), at


def clip_frames(clip, clip_id: str, source: str, params, model) -> list[dict]:
    """One row per frame: truth, the evidence's probability (not told), CNN on crops and on the whole frame."""
    rows, _ = clip_rows(clip, source, clip_id, False, params)
    rgbs = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in clip.frames]
    size = model.image_size
    h, w = rgbs[0].shape[:2]
    if min(h, w) < size:
        sys.exit(f"cnn_mover_crops: {clip_id}: frames {w}x{h} are smaller than the model's {size} px crops")
    meter = MotionMeter(params.video.analysis)
    boxes = [[(0, 0, w, h)] if clip.kind in CAMERA_KINDS else
             [(r["x"], r["y"], r["w"], r["h"]) for r in meter.push(f).regions] for f in rgbs]
    with_crops = [k for k, b in enumerate(boxes) if b]
    crop_probs, _ = score_tiled(model.scorer, (crops(rgbs[k], boxes[k], size) for k in with_crops))
    whole, _ = score_frames(model.scorer, rgbs, size)
    crop_of = dict(zip(with_crops, crop_probs.tolist(), strict=True))
    for k, row in enumerate(rows):
        row.update(crop=crop_of.get(k), whole=float(whole[k]), pair=clip_id.rsplit("-", 1)[0])
    return rows


def render(seed: int, photos: dict, params, clips_per_kind: int, model) -> list[dict]:
    """Every frame of the person, vibration and pan clips of one rendering seed (src/video.py's loop and seeding,
    with `seed` in place of params.seed)."""
    c = params.video.clips
    rows: list[dict] = []
    for source in sorted(photos):
        for kind in KINDS:
            for n in range(clips_per_kind):
                rng = np.random.default_rng([seed, CLIP_KINDS.index(kind), n, len(source)])
                for attempt in range(MAX_TRIES):
                    path, anns = photos[source][(n + attempt * clips_per_kind) % len(photos[source])]
                    image = cv2.imread(str(path))
                    if image is None:
                        sys.exit(f"cnn_mover_crops: {path}: not a readable image")
                    try:
                        twins = render_twins(image, kind, rng, c, anns)
                        break
                    except ValueError:
                        continue  # no usable person in this photo: the next one, as the stage does
                else:
                    print(f"  {source} {kind} {n}: no usable photo in {MAX_TRIES} tries, left out")
                    continue
                for clip in twins:
                    rows += clip_frames(clip, f"s{seed}-{source}-{kind}-{n}-{clip.shutter}", source, params, model)
    return rows


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def features(rows: list[dict], cnn: str) -> np.ndarray:
    """[evidence probability, the CNN's logit (0 where it gave no score), whether it gave one]."""
    has = np.array([r[cnn] is not None for r in rows], float)
    prob = np.array([0.5 if r[cnn] is None else r[cnn] for r in rows])
    return np.c_[[r["probability"] for r in rows], logit(prob) * has, has]


def fuse(rows: list[dict], cnn: str) -> None:
    """Adds `fused_<cnn>` to each row: 2-fold by twin pair within a kind (pairs alternate between folds in their
    rendering order, so each fold holds both sources); fitted on the labelled frames of the other fold."""
    for kind in KINDS:
        sel = [r for r in rows if r["kind"] == kind]
        pairs = sorted({r["pair"] for r in sel}, key=lambda p: (p.split("-")[1], int(p.split("-")[-1])))
        fold = {p: i % 2 for i, p in enumerate(pairs)}
        for f in (0, 1):
            train = [r for r in sel if fold[r["pair"]] != f and label(r) is not None]
            test = [r for r in sel if fold[r["pair"]] == f]
            y = [label(r) for r in train]
            fitted = LogisticRegression().fit(features(train, cnn), y) if len(set(y)) == 2 else None
            scores = fitted.predict_proba(features(test, cnn))[:, 1] if fitted else [None] * len(test)
            for r, p in zip(test, scores, strict=True):
                r[f"fused_{cnn}"] = p  # None: this fold's training half held one class only (too few clips)


def label(row: dict) -> int | None:
    """1: rolling-shutter frame with visible shear; 0: a global-shutter twin's frame; None: neither (not scored)."""
    if row["shutter"] == "global":
        return 0
    return 1 if row["true_shear_px"] >= VISIBLE_PX else None


def auc(rows: list[dict], key: str) -> tuple[float | None, int]:
    sel = [r for r in rows if label(r) is not None and r[key] is not None]
    y = [label(r) for r in sel]
    if len(set(y)) < 2:
        return None, len(sel)
    return float(roc_auc_score(y, [r[key] for r in sel])), len(sel)


COLUMNS = ("probability", "fused_crop", "fused_whole", "crop", "whole")


def twin_wins(rows: list[dict], key: str) -> float | None:
    """How often a rolling-shutter frame with visible shear scores above the same frame of its global-shutter twin
    (ties count half): the ROC AUC over twin pairs only. Same photo, same motion, only the shutter differs, so a
    score that merely follows the motion (faster frames shear more, and the labelled frames are the faster ones)
    reads 0.5 here."""
    twin = {(r["pair"], r["frame"]): r[key] for r in rows if r["shutter"] == "global"}
    pairs = [(r[key], twin.get((r["pair"], r["frame"]))) for r in rows if label(r) == 1]
    wins = [float(a > b) + 0.5 * float(a == b) for a, b in pairs if a is not None and b is not None]
    return float(np.mean(wins)) if wins else None


def report(seed: int, rows: list[dict]) -> dict:
    """Prints and returns the ROC AUC of each score (COLUMNS) per kind and per kind and source."""
    out = {}
    print(f"seed {seed}: {'group':<12} {'frames':>6} {'evidence':>9} {'fused+crops':>12} {'fused+whole':>12} "
          f"{'crops':>6} {'(n)':>5} {'whole':>6} {'twin:evid':>9} {'crops':>6} {'whole':>6}")
    for kind in KINDS:
        for source in (None, *SOURCES):
            sel = [r for r in rows if r["kind"] == kind and source in (None, r["source"])]
            (ev, n), (fc, _), (fw, _), (cr, nc), (wh, _) = (auc(sel, k) for k in COLUMNS)
            te, tc, tw = (twin_wins(sel, k) for k in ("probability", "crop", "whole"))
            out[(kind, source)] = {"evidence": ev, "fused_crop": fc, "fused_whole": fw, "crop": cr, "whole": wh,
                                   "twin_evidence": te, "twin_crop": tc, "twin_whole": tw}
            name = kind if source is None else f"  {source}"
            print(f"{'':>{len(str(seed)) + 6}}{name:<12} {n:>6} " + " ".join(
                f"{'-' if v is None else f'{v:.3f}':>{wd}}" for v, wd in ((ev, 9), (fc, 12), (fw, 12), (cr, 6)))
                  + f" {nc:>5} " + " ".join(f"{'-' if v is None else f'{v:.3f}':>{wd}}"
                                            for v, wd in ((wh, 6), (te, 9), (tc, 6), (tw, 6))))
    return out


def summary(results: dict) -> None:
    """Per kind over seeds: each score's mean ROC AUC (min-max), and the fusions' held-out gain over the evidence."""
    print("evidence: probability, readout not told; fused+crops / fused+whole: logistic regression on [evidence, "
          "CNN logit, has a score], 2-fold by twin pair, held out; crops: CNN on native crops around movers (n: "
          "labelled frames with a crop); whole: CNN on the downscaled frame; twin: how often a labelled rolling-"
          "shutter frame scores above the same frame of its twin")
    for kind in KINDS:
        for source in (None, *SOURCES):
            per = [r[(kind, source)] for r in results.values()]
            cells = []
            for key in ("evidence", "fused_crop", "fused_whole", "crop", "whole", "twin_evidence", "twin_crop",
                        "twin_whole"):
                v = [p[key] for p in per if p[key] is not None]
                cells.append(f"{key} {np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})" if v else f"{key} -")
            for key in ("fused_crop", "fused_whole"):
                g = [p[key] - p["evidence"] for p in per if p[key] is not None and p["evidence"] is not None]
                cells.append(f"gain {key} " + ", ".join(f"{x:+.3f}" for x in g))
            print(f"{kind if source is None else '  ' + source}: " + "; ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=ROOT / "data" / "raw")
    ap.add_argument("--model", default=str(ROOT / "models" / "model.keras"))
    ap.add_argument("--seeds", type=int, default=2, help="rendering seeds: params.seed, params.seed + 1, ...")
    ap.add_argument("--clips-per-kind", type=int, default=None, help="default: video.clips.clips_per_kind")
    args = ap.parse_args()
    if not (args.raw / "instances.json").is_file():
        sys.exit(f"cnn_mover_crops: {args.raw / 'instances.json'} not found (run `dvc repro fetch` or give --raw)")
    params = load_params(ROOT / "params.yaml")
    model = load_model(args.model)
    photos = test_photos(args.raw, params)
    per_kind = args.clips_per_kind or params.video.clips.clips_per_kind
    results = {}
    for seed in range(params.seed, params.seed + args.seeds):
        rows = render(seed, photos, params, per_kind, model)
        fuse(rows, "crop")
        fuse(rows, "whole")
        results[seed] = report(seed, rows)
    summary(results)


if __name__ == "__main__":
    main()
