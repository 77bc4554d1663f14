"""Issue 21's recheck, done here: the video path on clips rendered by a recipe of their own from photos the project
has never seen. A development experiment (not a stage): it needs ../shared.

The `video` stage renders its clips with rsdetect.synth.clips from the embedded test split. This renders them
independently, from the photos of ../shared's COCO samples that the repository does not embed (their licences keep
them out: read at run time, written nowhere), with its own choices where the stage's recipe made one:
- the camera's motion is band-limited noise, not a sinusoid: a shake is three sinusoids at 3-14 Hz with random
  phases and a random 2-D direction each, scaled to a 1-4 px peak; a pan eases in and out (a raised-cosine velocity
  ramp, not a linear one) at 2-10 px/frame in any direction within 30 degrees of the horizontal, after 8 still frames;
- a person (COCO polygon, filled with cv2.fillPoly, the hole filled with cv2.inpaint) walks at 3-16 px/frame, any
  direction within 20 degrees of the horizontal;
- lamps: the same walker under lamps on 50 or 60 Hz mains drawn at random (so at 25 or 30 frames/s half the clips'
  bands stand still and must stay unknown): a raised cosine at twice the mains with a second harmonic (not the
  stage's |sin|), dimming by 20-60%, each row exposed 0.5-5 ms before it is read;
- 25 or 30 frames/s, readout 6-33 ms (Gyroflow's database, 10th-90th percentile), sensor noise sigma 1-3 and a JPEG
  round trip at quality 75-92 per frame; 48 frames a clip;
- each row y of frame k is sampled at k + r y / (H - 1) (its global-shutter twin: every row at k + r / 2), by
  cv2.remap of the photo (bilinear), not by rsdetect.shutter.

Truth per frame: the largest distance between two rows' displacements of what moves (the camera's X(t) over the
frame's rows; the person's over its rows), in native px. The analysis is the stream path scan runs
(rsdetect.video.stream.analysed_frames), with the readout not told and told, and the numbers are the Done-when ones.
Measured 2026-12-07 (docs/video.md, "Recheck"), seeds 0/1/2 and seed 0 through mp4v: not told, camera frame ROC
AUC 0.990/0.977/0.968/0.988, clip 1.0/0.994/1.0/1.0, nothing static or global flagged, readouts within 25%
16/16, 16/16, 13/16, 14/16, twins 16/16 on each, walker frame ROC AUC 0.63/0.77/0.68/0.63; told, shear error
0.30/0.30/0.23/0.31 px, frame ROC AUC 0.985-0.989. Lamps (seeds 0-2): 12/12 readouts within 25% where the bands
drift, 12/12 unknown where they stand still, twins 24/24 unknown. ~110 s a run on 2 cores.
Run: PYTHONPATH=src python experiments/unseen_recheck.py [--clips 8] [--seed 0] [--codec mp4v] [--kinds pan ...]
     [--set smoothness=3 ...]   (video.analysis values swept in place of params.yaml's)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score
from video_params import video_analysis

from rsdetect.evaluation.photos import held_out_photos
from rsdetect.video.stream import analysed_frames

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FRAMES = 48
KINDS = ("shake", "pan", "person", "static", "lamps")
Path2 = Callable[[np.ndarray], np.ndarray]  # times (frames) -> (n, 2) displacement, px


def shake(rng: np.random.Generator, fps: float) -> tuple[Path2, float]:
    hz = rng.uniform(3, 14, 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    ang = rng.uniform(0, np.pi, 3)
    amp = rng.uniform(0.5, 1.0, 3)

    def unscaled(times: np.ndarray) -> np.ndarray:
        times = np.asarray(times, float)
        return sum(a * np.sin(2 * np.pi * f * times / fps + p)[:, None] * np.array([np.cos(g), np.sin(g)])
                   for a, f, p, g in zip(amp, hz, phase, ang, strict=True))

    peak = rng.uniform(1, 4)
    scale = peak / np.abs(unscaled(np.arange(0, FRAMES + 2, 0.05))).max()

    def at(times: np.ndarray) -> np.ndarray:
        return scale * unscaled(times)
    return at, peak


def pan(rng: np.random.Generator) -> tuple[Path2, float]:
    speed = rng.uniform(2, 10)
    ang = rng.uniform(-np.pi / 6, np.pi / 6) + (np.pi if rng.random() < 0.5 else 0.0)
    start, ramp, hold = 8.0, rng.uniform(4, 8), rng.uniform(8, 16)
    # velocity: 0, a raised-cosine rise over `ramp`, `hold`, a raised-cosine fall; position by its integral
    grid = np.arange(0, FRAMES + 4, 0.01)
    u = np.clip((grid - start) / ramp, 0, 1)
    d = np.clip((grid - start - ramp - hold) / ramp, 0, 1)
    v = speed * (0.5 - 0.5 * np.cos(np.pi * u)) * (0.5 + 0.5 * np.cos(np.pi * d))
    pos = np.concatenate([[0.0], np.cumsum((v[1:] + v[:-1]) / 2 * 0.01)])
    direction = np.array([np.cos(ang), np.sin(ang)])

    def at(times: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(times, float), grid, pos)[:, None] * direction[None, :]
    return at, speed


def row_times(k: int, h: int, r: float, rolling: bool) -> np.ndarray:
    return k + (r * np.arange(h) / (h - 1) if rolling else np.full(h, r / 2))


def diameter(points: np.ndarray) -> float:
    """The largest distance between two of the points (n, 2)."""
    diff = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diff ** 2).sum(-1)).max())


def camera_clip(photo: np.ndarray, at: Path2, r: float, rolling: bool, margin: int) -> tuple[list, list]:
    h, w = photo.shape[0] - 2 * margin, photo.shape[1] - 2 * margin
    xs = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    frames, truth = [], []
    for k in range(FRAMES):
        t = row_times(k, h, r, rolling)
        d = at(t)
        mx = (xs + margin + d[:, :1]).astype(np.float32)
        my = (np.arange(h, dtype=np.float32)[:, None] + margin + d[:, 1:]).repeat(w, 1).astype(np.float32)
        frames.append(cv2.remap(photo, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
        truth.append(diameter(at(row_times(k, 33, r, rolling) if rolling else np.full(1, k + r / 2))))
    return frames, truth


def person_clip(photo: np.ndarray, polygons: list, speed: float, ang: float, r: float, rolling: bool
                ) -> tuple[list, list]:
    h, w = photo.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for poly in polygons:
        cv2.fillPoly(mask, [np.round(np.asarray(poly, float).reshape(-1, 2)).astype(np.int32)], 255)
    background = cv2.inpaint(photo, cv2.dilate(mask, np.ones((7, 7), np.uint8)), 5, cv2.INPAINT_TELEA)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (3, 3), 0)
    v = speed * np.array([np.cos(ang), np.sin(ang)])
    xs = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    frames, truth = [], []
    for k in range(FRAMES):
        t = row_times(k, h, r, rolling) - FRAMES / 2  # centred: it walks through where it stood
        d = t[:, None] * v[None, :]
        mx = (xs - d[:, :1]).astype(np.float32)
        my = (np.arange(h, dtype=np.float32)[:, None] - d[:, 1:]).repeat(w, 1).astype(np.float32)
        person = cv2.remap(photo, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        a = cv2.remap(alpha, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        frames.append(np.clip(background * (1 - a) + person * a, 0, 255).astype(np.uint8))
        seen = np.nonzero(a[..., 0].max(axis=1) > 0.5)[0]
        rows = (seen.max() - seen.min()) if len(seen) else 0
        truth.append(speed * r * rows / (h - 1) if rolling and rows else 0.0)
    return frames, truth


def lamps(frames: list, rng: np.random.Generator, fps: float, r: float, rolling: bool) -> tuple[list, float]:
    """`frames` under lamps on mains of 50 or 60 Hz (drawn): a raised cosine at twice the mains plus its second
    harmonic, dimming by 20-60%, each row integrating it over 0.5-5 ms before its read time; and the lamps' hz."""
    hz = 2.0 * float(rng.choice([50.0, 60.0]))
    depth, exposure, phase = rng.uniform(0.2, 0.6), rng.uniform(0.5, 5.0) / 1000, rng.uniform(0, 2 * np.pi)
    out = []
    for k, frame in enumerate(frames):
        t = row_times(k, frame.shape[0], r, rolling)[:, None] / fps - np.linspace(0, exposure, 8)[None, :]
        wave = (0.5 + 0.5 * np.cos(2 * np.pi * hz * t + phase) + 0.15 * np.cos(4 * np.pi * hz * t + 1.0)) / 1.15
        light = (1 - depth + depth * wave).mean(axis=1)
        out.append(np.clip(frame * light[:, None, None], 0, 255).astype(np.uint8))
    return out, hz


def degraded(frames: list, rng: np.random.Generator, fps: float, codec: str | None, tmp: Path) -> list:
    sigma, quality = rng.uniform(1, 3), int(rng.integers(75, 93))
    noise_rng = np.random.default_rng(rng.integers(1 << 31))
    out = []
    for f in frames:
        noisy = np.clip(f + noise_rng.normal(0, sigma, f.shape), 0, 255).astype(np.uint8)
        if codec is None:
            noisy = cv2.imdecode(cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)
        out.append(noisy)
    if codec is None:
        return out
    h, w = out[0].shape[:2]
    path = tmp / f"clip.{'avi' if codec != 'mp4v' else 'mp4'}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w - w % 2, h - h % 2))
    for f in out:
        writer.write(f[:h - h % 2, :w - w % 2])
    writer.release()
    cap, back = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        back.append(f)
    return back


def analysed(frames: list, fps: float, analysis, readout_ms: float | None, shutter: str | None) -> tuple[list, dict]:
    said: dict = {}
    items = ((k, k / fps, cv2.cvtColor(f, cv2.COLOR_BGR2RGB)) for k, f in enumerate(frames))
    rows = [ev for *_, ev in analysed_frames(items, analysis, readout_ms, shutter, said.update)]
    return rows, said


def rate(flags: list[bool]) -> str:
    return f"{np.mean(flags):.4f}" if flags else "-"


def auc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    return round(float(roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg)), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8, help="clips per kind (each with its global-shutter twin)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codec", default=None, help="FOURCC (mp4v, MJPG): the clip goes through it, not JPEG")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="only these kinds of clip")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="video.analysis values in place of params.yaml's (a sweep), checked by its schema")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: not found; this experiment renders from ../shared's COCO samples")
    analysis = video_analysis(ROOT / "params.yaml", args.set, "unseen_recheck")
    held = held_out_photos([SHARED / "coco-scenes-sample", SHARED / "coco-person-sample"],
                           [ROOT / "data" / "coco-licensed" / "instances.json"])
    rng = np.random.default_rng(args.seed)
    scenes = [p for p in held if "scenes" in str(p[0])]
    people = [(p, [a for a in anns if not a.get("iscrowd") and a["area"] > 0.03 * im["width"] * im["height"]])
              for p, im, anns in held if "person" in str(p)]
    people = [(p, anns) for p, anns in people if anns]
    print(f"unseen photos: {len(scenes)} scenes, {len(people)} with a person of >= 3% of the photo "
          f"({held.excluded} embedded ones left out)")
    rows: list[dict] = []
    clips: list[dict] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            for n in range(args.clips):
                fps = float(rng.choice([25, 30]))
                readout_ms = float(rng.uniform(6, 33))
                if kind not in args.kinds:
                    continue  # after the draws: the clips kept are those of a full run
                r = readout_ms * fps / 1000
                twins = {}
                for rolling in (True, False):
                    crng = np.random.default_rng([args.seed, KINDS.index(kind), n])  # twins: same draws
                    hz = None
                    if kind in ("person", "lamps"):
                        path, anns = people[int(crng.integers(len(people)))]
                        photo = cv2.imread(str(path))
                        ann = max(anns, key=lambda a: a["area"])
                        heading = crng.uniform(-np.pi / 9, np.pi / 9) + (np.pi if crng.random() < 0.5 else 0.0)
                        frames, truth = person_clip(photo, ann["segmentation"], crng.uniform(3, 16), heading, r,
                                                    rolling)
                        if kind == "lamps":
                            frames, hz = lamps(frames, crng, fps, r, rolling)
                    else:
                        path = scenes[int(crng.integers(len(scenes)))][0]
                        photo = cv2.imread(str(path))
                        if kind == "shake":
                            at, _ = shake(crng, fps)
                        elif kind == "pan":
                            at, _ = pan(crng)
                        else:
                            def at(t: np.ndarray) -> np.ndarray:
                                return np.zeros((len(np.atleast_1d(t)), 2))
                        travel = np.abs(at(np.arange(-1, FRAMES + 2, 0.25))).max(axis=0)
                        margin = int(np.ceil(travel.max())) + 2
                        if min(photo.shape[:2]) - 2 * margin < 160:
                            margin = (min(photo.shape[:2]) - 160) // 2  # a long pan of a small photo: reflected
                        frames, truth = camera_clip(photo, at, r, rolling, margin)
                    frames = degraded(frames, crng, fps, args.codec, Path(tmp))
                    twins[rolling] = (frames, truth[:len(frames)])
                for rolling, (frames, truth) in twins.items():
                    shutter = "rolling" if rolling else "global"
                    for told in (False, True):
                        got, readout = analysed(frames, fps, analysis, readout_ms if told and rolling else None,
                                                "global" if told and not rolling else None)
                        cid = f"{kind}-{n}-{shutter}"
                        for row, t in zip(got, truth, strict=False):
                            rows.append({**row, "clip": cid, "kind": kind, "shutter": shutter, "told": told,
                                         "truth": t})
                        clips.append({"clip": cid, "kind": kind, "shutter": shutter, "told": told, "hz": hz,
                                      "fps": fps, "true_ms": readout_ms if rolling else 0.0, **readout})
    report(rows, clips)
    print(f"({len(clips) // 2} clips, {time.perf_counter() - start:.0f} s)")


def report(rows: list[dict], clips: list[dict]) -> None:
    camera = ("shake", "pan")
    for told in (False, True):
        sel = [x for x in rows if x["told"] == told]
        cam = [x for x in sel if x["kind"] in camera]
        pos = [x["probability"] for x in cam if x["shutter"] == "rolling" and x["truth"] >= 2]
        neg = [x["probability"] for x in cam if x["shutter"] == "global"]
        best: dict[str, tuple[str, float]] = {}
        for x in cam:
            best[x["clip"]] = (x["shutter"], max(best.get(x["clip"], ("", 0.0))[1], x["probability"]))
        clip_auc = auc([s for sh, s in best.values() if sh == "rolling"],
                       [s for sh, s in best.values() if sh == "global"])
        static = rate([x["flag"] for x in sel if x["kind"] == "static"])
        twins = rate([x["flag"] for x in sel if x["shutter"] == "global"])
        walker, lit = (auc([x["probability"] for x in sel if x["kind"] == k and x["shutter"] == "rolling"
                            and x["truth"] >= 2], [x["probability"] for x in sel if x["kind"] == k
                                                   and x["shutter"] == "global"]) for k in ("person", "lamps"))
        print(f"{'told' if told else 'not told'}: camera frame ROC AUC {auc(pos, neg)} (>= 2 px: {len(pos)} frames), "
              f"clip {clip_auc}; static flagged {static}, global twins {twins}; "
              f"person frame ROC AUC {walker}; under lamps {lit}")
        if told:
            err = [abs(x["rs_shear_px"] - x["truth"]) for x in sel if x["shutter"] == "rolling" and x["truth"] >= 1
                   and x["rs_shear_px"] is not None]
            big = [x["probability"] for x in sel if x["truth"] >= 2]
            clean = [x["probability"] for x in sel if x["truth"] < 0.5]
            by = {k: np.median([abs(x["rs_shear_px"] - x["truth"]) for x in sel if x["kind"] == k
                                and x["shutter"] == "rolling" and x["truth"] >= 1] or [np.nan])
                  for k in KINDS if k != "static"}
            print(f"told: median |rs_shear_px - truth| {np.median(err or [np.nan]):.3f} px over {len(err)} frames "
                  f">= 1 px "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in by.items())}); frame ROC AUC >= 2 px vs < 0.5 px "
                  f"{auc(big, clean)}")
        else:
            est = [c for c in clips if not c["told"] and c["kind"] in camera]
            ok = [c for c in est if c["shutter"] == "rolling" and c.get("ms") is not None
                  and abs(c["ms"] - c["true_ms"]) <= 0.25 * c["true_ms"]]
            rs = [c for c in est if c["shutter"] == "rolling"]
            tw = [c for c in est if c["shutter"] == "global"]
            tw_ok = [c for c in tw if c.get("ms") is None or c["ms"] <= 2.0]
            print(f"not told: readout within 25% {len(ok)}/{len(rs)}, twins unknown or <= 2 ms {len(tw_ok)}/{len(tw)}")
            for c in rs:
                print(f"  {c['clip']:18s} true {c['true_ms']:5.1f} ms, estimated {c.get('ms')} ({c.get('source')}, "
                      f"{c.get('evidence_frames')} frames)")
            for c in tw:
                if c not in tw_ok:
                    print(f"  twin {c['clip']} estimated {c.get('ms')} ms")
            lit = [c for c in clips if not c["told"] and c["kind"] == "lamps"]
            if lit:
                # bands drift where the frame rate does not divide the lamps' flicker (video/flicker.py)
                drifts = [c for c in lit if c["shutter"] == "rolling"
                          and abs((c["hz"] / c["fps"] + 0.5) % 1 - 0.5) >= 0.05]
                still = [c for c in lit if c["shutter"] == "rolling" and c not in drifts]
                good = [c for c in drifts if c.get("ms") is not None
                        and abs(c["ms"] - c["true_ms"]) <= 0.25 * c["true_ms"]]
                gs = [c for c in lit if c["shutter"] == "global"]
                print(f"not told, lamps: readout within 25% {len(good)}/{len(drifts)} where the bands drift "
                      f"({sum(c.get('method') == 'flicker' for c in good)} from the flicker), unknown "
                      f"{sum(c.get('ms') is None for c in still)}/{len(still)} where they stand still, twins unknown "
                      f"or <= 2 ms {sum(c.get('ms') is None or c['ms'] <= 2.0 for c in gs)}/{len(gs)}")
                for c in lit:
                    if c["shutter"] == "rolling":
                        print(f"  {c['clip']:18s} {c['hz']:.0f} Hz at {c['fps']:.0f} fps, true {c['true_ms']:5.1f} ms, "
                              f"estimated {c.get('ms')} ({c.get('source')}, {c.get('method')})")


if __name__ == "__main__":
    main()
