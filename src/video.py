"""Stage video: rolling shutter judged from motion, measured on rendered twin clips from the test photos.

Renders video.clips.clips_per_kind rolling-shutter clips of each kind (vibration, pan, person, static, a person
under flickering lamps: flicker, and a shake that also rolls: roll) from each
photo source (real, drawn) of the test split, each with its global-shutter twin (rsdetect.synth.clips), streams
every clip through the path `scan` and `watch` run in each camera's decoder process (rsdetect.video.stream:
frames in order, each row lag_frames behind, the readout estimated as the evidence comes in) twice, the readout
not told and told (the true readout_ms; shutter global for the twins), and writes metrics (ROC AUC by kind and
source via sklearn, flag rates, shear error, readout error) and a figure. Told, each distorted frame's `unroll`
(how to undo its measured shear: what a correction step gets) is applied and compared with its global-shutter twin
(`deskew_to_twin`).

Run: python src/video.py RAW METRICS FIGURE [CLIP_SEED]. CLIP_SEED draws the clips (motion, readout, noise) from
another seed than params' seed, the photos staying: for measuring a change on other draws than the stage's one set
of clips. The stage runs without it.
"""
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from rsdetect.config import load_params
from rsdetect.datasets.instances import load_instances
from rsdetect.errors import RsdetectError
from rsdetect.io import atomic_write_bytes, write_json
from rsdetect.stage import run_stage
from rsdetect.synth.clips import CLIP_KINDS, render_twins
from rsdetect.synth.twins import split_images
from rsdetect.video.evidence import unroll
from rsdetect.video.stream import analysed_frames

CAMERA_KINDS = ("vibration", "pan")
VISIBLE_PX = 2.0      # the bar: a frame with true shear >= 2 px is distorted ...
CLEAN_PX = 0.5        # ... and one under 0.5 px is clean (told-readout AUC)
SHEAR_ERROR_PX = 1.0  # median |rs_shear_px - truth| is taken over frames with true shear >= this
READOUT_TOLERANCE = 0.25  # an estimate within 25% of the truth is right
TWIN_READOUT_MS = 2.0     # a global-shutter twin's estimate at or under this (or unknown) is right
MAX_TRIES = 20        # photos tried per clip (a person clip needs a photo with a usable person)
BORDER_PX = 16        # the de-skew is compared inside this margin: a row's shift brings border pixels in
DISTORTED_LEVELS = 20  # ... and also where the frame differs from its twin by more (grey levels, any channel)


def test_photos(raw: Path, params) -> dict[str, list[tuple[Path, list]]]:
    """The test split's photos by source (real, drawn), each with its annotations, in id order."""
    coco = load_instances(raw / "instances.json")
    split = split_images(coco["images"], params.seed, params.synthesize.val_fraction, params.synthesize.test_fraction)
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    by_source: dict[str, list] = {}
    for im in sorted(coco["images"], key=lambda im: im["id"]):
        if split[im["id"]] == "test":
            by_source.setdefault(im["file_name"].split("/")[0], []).append((raw / "images" / im["file_name"],
                                                                             anns.get(im["id"], [])))
    return by_source


def clip_rows(clip, source: str, clip_id: str, told: bool, params) -> tuple[list[dict], dict]:
    told_args = {"readout_ms": clip.readout_ms} if clip.shutter == "rolling" else {"shutter": "global"}
    sensor = {"readout_ms": None, "shutter": None, **(told_args if told else {})}
    readout: dict = {}
    # RGB, as every reader hands frames on (sources.video_frames): the analysis measures what scan measures
    frames = ((k, k / clip.fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)) for k, frame in enumerate(clip.frames))
    rows = [evidence for *_, evidence in analysed_frames(frames, params.video.analysis, sensor["readout_ms"],
                                                         sensor["shutter"], readout.update)]
    true_ms = clip.readout_ms if clip.shutter == "rolling" else 0.0
    for row, truth in zip(rows, clip.truth, strict=True):
        row.update(clip=clip_id, kind=clip.kind, shutter=clip.shutter, source=source, told=told,
                   true_shear_px=truth["rs_shear_px"], true_motion_px=truth["motion_px"], true_readout_ms=true_ms)
    return rows, {"clip": clip_id, "kind": clip.kind, "shutter": clip.shutter, "source": source, "told": told,
                  "true_readout_ms": true_ms, **readout}


def deskew_errors(rows: list[dict], clip, twin) -> None:
    """Each told distorted frame (true shear >= VISIBLE_PX) of a rolling-shutter clip whose row says how to undo its
    shear (`unroll`, what a correction step is handed): its mean absolute difference (grey levels, inside BORDER_PX)
    to its global-shutter twin's frame, read at the same mid-frame instant with the same noise, as rendered and
    with the unroll applied, over the whole frame (`deskew_before`, `deskew_after`) and where the frame as rendered
    differs from the twin by over DISTORTED_LEVELS (`deskew_before_distorted`, `deskew_after_distorted`: a mover's
    pixels; the whole frame also counts what the unroll moved that did not need it)."""
    inner = (slice(BORDER_PX, -BORDER_PX), slice(BORDER_PX, -BORDER_PX))
    for row, frame, target in zip(rows, clip.frames, twin.frames, strict=True):
        if row.get("unroll") is not None and row["true_shear_px"] >= VISIBLE_PX:
            goal = target[inner].astype(np.float32)
            before = np.abs(frame[inner].astype(np.float32) - goal)
            after = np.abs(unroll(frame, row["unroll"])[inner].astype(np.float32) - goal)
            distorted = before.max(axis=2) > DISTORTED_LEVELS
            row.update(deskew_before=float(before.mean()), deskew_after=float(after.mean()))
            if distorted.any():
                row.update(deskew_before_distorted=float(before[distorted].mean()),
                           deskew_after_distorted=float(after[distorted].mean()))


def deskew_summary(told: list[dict]) -> dict:
    """By kind, over the frames deskew_errors measured: how many, and the median of after / before over the whole
    frame and where it was distorted (1: the de-skew changed nothing, under 1: closer to the twin; never 0: the
    twins' own JPEG round trips differ)."""
    def ratio(sel: list[dict], suffix: str) -> float | None:
        pairs = [(r[f"deskew_after{suffix}"], r[f"deskew_before{suffix}"]) for r in sel if f"deskew_after{suffix}" in r]
        return round(float(np.median([a / max(b, 1e-6) for a, b in pairs])), 3) if pairs else None

    out = {}
    for kind in CLIP_KINDS:
        sel = [r for r in told if r["kind"] == kind and "deskew_after" in r]
        out[kind] = {"frames": len(sel), "ratio_median": ratio(sel, ""),
                     "ratio_median_where_distorted": ratio(sel, "_distorted")}
    return out


def auc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    return round(float(roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg)), 4)


def frame_auc(rows: list[dict], kinds, source: str | None = None) -> float | None:
    """Frames with true shear >= VISIBLE_PX of RS clips against every frame of their GS twins."""
    sel = [r for r in rows if r["kind"] in kinds and (source is None or r["source"] == source)]
    return auc([r["probability"] for r in sel if r["shutter"] == "rolling" and r["true_shear_px"] >= VISIBLE_PX],
               [r["probability"] for r in sel if r["shutter"] == "global"])


def clip_auc(rows: list[dict], kinds) -> float | None:
    """A clip's score is its largest frame probability; RS clips against their GS twins."""
    scores: dict[str, tuple[str, float]] = {}
    for r in rows:
        if r["kind"] in kinds:
            prev = scores.get(r["clip"], (r["shutter"], 0.0))[1]
            scores[r["clip"]] = (r["shutter"], max(prev, r["probability"]))
    return auc([s for sh, s in scores.values() if sh == "rolling"], [s for sh, s in scores.values() if sh == "global"])


def per_ms_error(distorted: list[dict], kind: str) -> float | None:
    """Median |shear per ms of readout (measured without the readout) x the true readout - the true shear| over the
    distorted frames of `kind`: a constant-velocity mover's is its shear; a shake's only to first order (its shear
    follows its curve within the frame)."""
    errors = [abs(r["shear_px_per_ms"] * r["true_readout_ms"] - r["true_shear_px"]) for r in distorted
              if r["kind"] == kind]
    return round(float(np.median(errors)), 3) if errors else None


def shear_error(distorted: list[dict]) -> float | None:
    """Median |rs_shear_px - truth| over the frames whose shear was measured (a readout known)."""
    errors = [abs(r["rs_shear_px"] - r["true_shear_px"]) for r in distorted if r["rs_shear_px"] is not None]
    return round(float(np.median(errors)), 3) if errors else None


def flag_rate(rows: list[dict]) -> float | None:
    return round(float(np.mean([r["flag"] for r in rows])), 4) if rows else None


def readout_right(clip: dict) -> bool:
    """A rolling-shutter clip's readout estimated within READOUT_TOLERANCE of the truth."""
    return clip["ms"] is not None and abs(clip["ms"] - clip["true_readout_ms"]) <= READOUT_TOLERANCE * clip[
        "true_readout_ms"]


def twin_right(clip: dict) -> bool:
    """A global-shutter twin's readout unknown or at most TWIN_READOUT_MS."""
    return clip["ms"] is None or clip["ms"] <= TWIN_READOUT_MS


def kind_readouts(clips: list[dict], kind: str) -> tuple[list[dict], dict]:
    """A kind's rolling-shutter clips, and its readouts (not told): the share within 25% and the share of its
    global-shutter twins left unknown or at most TWIN_READOUT_MS."""
    rs = [c for c in clips if c["kind"] == kind and c["shutter"] == "rolling"]
    gs = [c for c in clips if c["kind"] == kind and c["shutter"] == "global"]
    return rs, {"within_25pct": round(float(np.mean([readout_right(c) for c in rs])), 4) if rs else None,
                "twins_ok": round(float(np.mean([twin_right(c) for c in gs])), 4) if gs else None}


def flicker_readouts(clips: list[dict]) -> dict:
    """Readouts of the fixed cameras under flickering lamps (kind_readouts), with the estimated ones' median error,
    the unknown ones (bands that drift under video.analysis.flicker_min_drift a frame tell nothing), and those read
    off the flicker."""
    rs, shares = kind_readouts(clips, "flicker")
    known = [c for c in rs if c["ms"] is not None]
    return {
        **shares,
        "error_median_ms": round(float(np.median([abs(c["ms"] - c["true_readout_ms"]) for c in known])), 3)
        if known else None,
        "unknown": len(rs) - len(known),
        "from_flicker": sum(c.get("method") == "flicker" for c in known),
    }


def roll_readouts(clips: list[dict], rows: list[dict]) -> dict:
    """Shaking mounts that also roll (kind_readouts), with the share of the twins' frames flagged. Apart from the
    camera kinds: the issue's goals name shakes and pans, and a roll gives every shutter a row dependence of its own
    (video.analysis.roll_camera_work_px)."""
    return {**kind_readouts(clips, "roll")[1],
            "twin_frames_flagged": flag_rate([r for r in rows if r["kind"] == "roll" and r["shutter"] == "global"])}


def summarise(rows: list[dict], clips: list[dict]) -> dict:
    out: dict = {}
    for told in (False, True):
        sel = [r for r in rows if r["told"] == told]
        cl = [c for c in clips if c["told"] == told]
        m: dict = {
            "frame_roc_auc": {k: frame_auc(sel, (k,)) for k in CLIP_KINDS if k != "static"},
            "frame_roc_auc_camera": frame_auc(sel, CAMERA_KINDS),
            "frame_roc_auc_camera_by_source": {s: frame_auc(sel, CAMERA_KINDS, s) for s in ("real", "drawn")},
            "clip_roc_auc_camera": clip_auc(sel, CAMERA_KINDS),
            "clip_roc_auc": {k: clip_auc(sel, (k,)) for k in CLIP_KINDS if k != "static"},
            "flag_rate_static": flag_rate([r for r in sel if r["kind"] == "static"]),
            "flag_rate_global_twins": flag_rate([r for r in sel if r["shutter"] == "global"]),
            "flag_rate_frames_without_motion": flag_rate([r for r in sel if r["true_motion_px"] == 0]),
        }
        distorted = [r for r in sel if r["shutter"] == "rolling" and r["true_shear_px"] >= SHEAR_ERROR_PX]
        measured = sum(r["rs_shear_px"] is not None for r in distorted)
        m["shear_error_median_px"] = shear_error(distorted)
        m["shear_error_median_px_by_kind"] = {k: shear_error([r for r in distorted if r["kind"] == k])
                                              for k in CLIP_KINDS if k != "static"}
        m["shear_error_frames"] = measured
        m["shear_null_frames"] = len(distorted) - measured
        if told:
            m["deskew_to_twin"] = deskew_summary(sel)
            m["frame_roc_auc_2px_vs_clean"] = auc(
                [r["probability"] for r in sel if r["true_shear_px"] >= VISIBLE_PX],
                [r["probability"] for r in sel if r["true_shear_px"] < CLEAN_PX])
        else:
            m["shear_per_ms_error_median_px"] = {k: per_ms_error(distorted, k) for k in CLIP_KINDS if k != "static"}
            rs = [c for c in cl if c["kind"] in CAMERA_KINDS and c["shutter"] == "rolling"]
            gs = [c for c in cl if c["kind"] in CAMERA_KINDS and c["shutter"] == "global"]
            m["readout_within_25pct"] = round(float(np.mean([readout_right(c) for c in rs])), 4) if rs else None
            m["readout_unknown_rolling"] = sum(c["ms"] is None for c in rs)
            m["readout_twins_ok"] = round(float(np.mean([twin_right(c) for c in gs])), 4) if gs else None
            m["readout_static_unknown"] = round(
                float(np.mean([c["ms"] is None for c in cl if c["kind"] == "static"])), 4)
            m["readout_flicker"] = flicker_readouts(cl)
            m["readout_roll"] = roll_readouts(cl, sel)
        out["told" if told else "not_told"] = m
    return out


def figure(rows: list[dict], clips: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    for kind in CLIP_KINDS:
        sel = [r for r in rows if r["told"] and r["kind"] == kind and r["rs_shear_px"] is not None]
        a.scatter([r["true_shear_px"] for r in sel], [r["rs_shear_px"] for r in sel], s=4, label=kind)
    a.plot([0, 8], [0, 8], "k--", lw=0.8)
    a.set(xlabel="true rs_shear_px", ylabel="measured rs_shear_px (readout told)", title="shear per frame")
    a.legend()
    rs = [c for c in clips if not c["told"] and c["shutter"] == "rolling" and c["kind"] in CAMERA_KINDS]
    est = [c for c in rs if c["ms"] is not None]
    b.errorbar([c["true_readout_ms"] for c in est], [c["ms"] for c in est],
               yerr=np.array([[c["ms"] - c["ci_ms"][0], c["ci_ms"][1] - c["ms"]] for c in est]).T if est else None,
               fmt="o", ms=3)
    b.plot([0, 35], [0, 35], "k--", lw=0.8)
    b.set(xlabel="true readout (ms)", ylabel="estimated (ms, 95% CI)",
          title=f"readout, not told ({len(rs) - len(est)} of {len(rs)} unknown)")
    fig.tight_layout()
    _, buf = cv2.imencode(".png", figure_pixels(fig))
    plt.close(fig)
    atomic_write_bytes(path, buf.tobytes())


def figure_pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return cv2.cvtColor(np.asarray(fig.canvas.buffer_rgba()), cv2.COLOR_RGBA2BGR)


def main() -> None:
    raw, metrics_path, figure_path = (Path(a) for a in sys.argv[1:4])
    params = load_params()
    # an optional 4th argument draws the clips from another seed (the photos and the split stay): measuring on
    # other draws than the stage's, so a change is not judged on one set of 16 camera clips
    clip_seed = int(sys.argv[4]) if len(sys.argv) > 4 else params.seed
    c = params.video.clips
    photos = test_photos(raw, params)
    rows, clips, skipped = [], [], 0
    start, frames = time.perf_counter(), 0
    for source in sorted(photos):
        for kind in CLIP_KINDS:
            for n in range(c.clips_per_kind):
                rng = np.random.default_rng([clip_seed, CLIP_KINDS.index(kind), n, len(source)])
                for attempt in range(MAX_TRIES):
                    path, anns = photos[source][(n + attempt * c.clips_per_kind) % len(photos[source])]
                    image = cv2.imread(str(path))
                    if image is None:
                        raise RsdetectError(f"{path}: not a readable image (run the fetch stage again)")
                    try:
                        twins = render_twins(image, kind, rng, c, anns)
                        break
                    except ValueError:
                        skipped += 1  # no usable person in this photo: the next one is tried
                else:
                    continue
                for clip in twins:
                    clip_id = f"{source}-{kind}-{n}-{clip.shutter}"
                    for told in (False, True):
                        r, info = clip_rows(clip, source, clip_id, told, params)
                        if told and clip.shutter == "rolling":
                            deskew_errors(r, clip, twins[1])
                        for row in r:  # what it says to undo is measured: not kept beside the thousands of rows
                            row.pop("unroll", None)
                        rows += r
                        clips.append(info)
                        frames += len(r)
    elapsed = time.perf_counter() - start
    # no timing in the metrics: they are the same on every run of the same code (dvc.lock, dvc metrics diff)
    metrics = {**summarise(rows, clips), "clips": len(clips) // 2, "frames_analysed": frames,
               "photos_skipped": skipped}
    write_json(metrics_path, metrics)
    figure(rows, clips, figure_path)
    nt, t = metrics["not_told"], metrics["told"]
    print(f"video: {metrics['clips']} clips; not told: camera frame AUC {nt['frame_roc_auc_camera']}, clip AUC "
          f"{nt['clip_roc_auc_camera']}, readout within 25% {nt['readout_within_25pct']}, static flagged "
          f"{nt['flag_rate_static']}, GS flagged {nt['flag_rate_global_twins']}; told: shear error "
          f"{t['shear_error_median_px']} px, AUC {t['frame_roc_auc_2px_vs_clean']}; rolling mounts: readout within 25% "
          f"{nt['readout_roll']['within_25pct']}, twins {nt['readout_roll']['twins_ok']} ({elapsed:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
