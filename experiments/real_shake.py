"""Real surveillance video, shaken: does the video path read a camera's readout off real footage's content?

The `video` stage's and the recheck's clips are rendered from still photos: their scenes hold still but for what is
drawn moving, and their noise is drawn. Real footage has real movers (cars, walkers) that the camera-motion fit must
leave out, real sensor noise and real codec blocks. The real cameras of ../shared/data/footage/ stand still, so
their readouts stay unknown. Here a camera motion is added to them: each output row is the real frame's row
displaced by the mount's trajectory at the row's read time (a rolling shutter, readout drawn within the frame
period) or at mid-frame for every row (its global-shutter twin), with the stage's motions (a 1-4 px shake at 4-12
Hz; a 3-10 px/frame pan that starts and stops; with --kinds tap, a knock on the mount that rings 0.2-0.6 s), on
segments of each file from its own offsets, cropped to the middle 90% (the trajectory never reads outside the frame)
and passed once more through JPEG (quality 90: the warp's interpolation smooths the codec's blocks away). The video
path (rsdetect.video.analyze.analyze, the code scan runs per camera) measures each clip not told and told its
readout (the truth; `shutter: global` for the twins).

Reported per file and kind: rolling-shutter readouts within 25% of the truth; twins unknown or <= 2 ms; the share of
the twins' frames flagged (not told); frame ROC AUC of frames sheared >= 2 px against their twins' (not told); told,
the median |rs_shear_px - truth| over frames sheared >= 1 px whose shear is the camera's (`evidence: camera-shear`;
the real movers' own shear is not known, so frames where a mover's is the larger are counted apart), and the same
for the camera's told shear on every such frame whichever evidence won (`camera told err`: a camera shear read short
loses the frame to a mover's and would leave the first number's frames).
What is not modelled: the real camera's own rolling shutter on its movers (the source frames' content is what it
is), lens distortion, motion blur of the added motion.
Run: PYTHONPATH=src python experiments/real_shake.py [--segments 6] [--frames 48] [--seed 0] [--noise 0] [--roll 0]
[--every 1]
[--told-only] [--kinds vibration,pan,tap] [--set KEY=VALUE ...]
[VIDEO ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from video_params import video_analysis  # noqa: E402

from rsdetect.config import load_params  # noqa: E402
from rsdetect.serve.sources import video_frames  # noqa: E402
from rsdetect.shutter import shear_extent, warp_rows  # noqa: E402
from rsdetect.synth.clips import crop_box, frame_times, pan, tap, turn_rows, turning, vibration  # noqa: E402
from rsdetect.video.analyze import CameraAnalyzer, analyze  # noqa: E402
from rsdetect.video.evidence import camera_shear  # noqa: E402

FOOTAGE = ROOT.parent / "shared" / "data" / "footage"
CROP = 0.9  # of each side kept: a 4 px shake or a pan's travel never reads outside the frame
JPEG_QUALITY = 90
PAN_TRAVEL = 0.08  # of the frame's width a pan travels at most, centred (the crop leaves 5% each side)
TAP_DECAY_S = (0.2, 0.6)  # a knocked mount's ringing dies away with a time constant in this range (s)


def trajectory(kind: str, rng: np.random.Generator, fps: float, frames: int, width: int):
    """The mount's motion (native px, time in frames), as the stage draws it (params.yaml video.clips)."""
    clips = load_params(ROOT / "params.yaml").video.clips
    if kind == "vibration":
        return vibration(rng.uniform(*clips.vibration_px), rng.uniform(*clips.vibration_hz), fps,
                         rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi))
    if kind == "tap":  # the shake's amplitude and frequency, knocked once after the still frames, ringing 0.2-0.6 s
        return tap(rng.uniform(*clips.vibration_px), rng.uniform(*clips.vibration_hz), fps, rng.uniform(*TAP_DECAY_S),
                   clips.still_frames, rng.uniform(0, np.pi))
    ramp = rng.uniform(*clips.pan_ramp_frames)
    travel = PAN_TRAVEL * width
    peak = min(rng.uniform(*clips.pan_px), travel / (ramp + 4))
    hold = float(np.clip(travel / peak - ramp, 0, frames - clips.still_frames - 2 * ramp))
    direction = rng.choice([0.0, np.pi])
    base = pan(peak, clips.still_frames, ramp, hold, direction)
    end = base(np.array([clips.still_frames + 2 * ramp + hold]))
    return lambda t: (base(t)[0] - end[0][0] / 2, base(t)[1] - end[1][0] / 2)


def render(frames: list[np.ndarray], move, r: float, shutter: str, noise: float = 0.0, roll=None
           ) -> tuple[list[np.ndarray], list[float]]:
    """RGB frames of the real ones moved by `move` row by row (frame_times), turned by roll(t) radians where given,
    with sensor noise of sd `noise` (a dark scene's; the same draws for a clip and its twin), cropped and re-encoded;
    per frame the true shear of the translation (native px: the spread of the rows' displacements)."""
    box = crop_box(frames[0], CROP)
    x0, y0, w, h = box
    out, truth = [], []
    rng = np.random.default_rng(0)
    for k, frame in enumerate(frames):
        t = frame_times(k, h, r, shutter)
        dx, dy = move(t)
        full_dx, full_dy = np.zeros(frame.shape[0]), np.zeros(frame.shape[0])
        full_dx[y0:y0 + h], full_dy[y0:y0 + h] = dx, dy
        moved = warp_rows(frame, full_dx, full_dy, box=box) if roll is None else turn_rows(frame, box, dx, dy, roll(t))
        if noise > 0:
            moved = np.clip(moved + rng.normal(0, noise, moved.shape), 0, 255).astype(np.uint8)
        _, buf = cv2.imencode(".jpg", cv2.cvtColor(moved, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        out.append(cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        truth.append(shear_extent(dx, dy))
    return out, truth


def told(frames: list[np.ndarray], fps: float, analysis, readout_ms: float) -> tuple[list[dict], list[float]]:
    """analyze() told the readout, and the camera's own told shear of each frame (0 where it did not move), which a
    row gives only where it is the larger."""
    analyzer = CameraAnalyzer(analysis, fps, readout_ms)
    for frame in frames:
        analyzer.push(frame)
    rows = analyzer.flush()
    r = readout_ms * fps / 1000.0
    trajectory = analyzer.trajectory(r)
    moving = {fm.index: fm.camera_moving for fm in analyzer.window}
    return rows, [camera_shear(trajectory, k, r) if moving.get(k) else 0.0 for k in range(len(frames))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="*", type=Path)
    ap.add_argument("--segments", type=int, default=6, help="segments per file and kind (default 6)")
    ap.add_argument("--frames", type=int, default=48, help="frames per clip (default 48)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.0, help="sensor noise sd added, grey levels (default 0)")
    ap.add_argument("--every", type=int, default=1,
                    help="every Nth frame of the footage, at its frame rate / N: a camera recording at a low rate")
    ap.add_argument("--roll", type=float, default=0.0,
                    help="shakes also turn, up to this many px at the crop's side edges, 4-12 Hz (default 0)")
    ap.add_argument("--kinds", default="vibration,pan",
                    help="vibration, pan and tap (a knock on the mount: still, then ringing that dies away), comma "
                         "separated (default vibration,pan)")
    ap.add_argument("--told-only", action="store_true", help="only the told measures (a third of the time)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="video.analysis values in place of params.yaml's, checked by its schema (as before "
                         "2026-12-07: shear_smoothness=1e9 evidence_margin_frames=1000000000)")
    args = ap.parse_args()
    analysis = video_analysis(ROOT / "params.yaml", args.set, "real_shake")
    videos = args.videos or sorted(FOOTAGE.glob("*.avi"))
    if not videos:
        raise SystemExit(f"no videos given and none in {FOOTAGE}")
    rng = np.random.default_rng(args.seed)
    turns = np.random.default_rng([args.seed, 1])  # --roll's draws
    for video in videos:
        stamped = list(video_frames(str(video), on_note=lambda _: None))
        fps = 1.0 / (stamped[1][1] - stamped[0][1]) / args.every
        frames = [rgb for _, _, rgb in stamped[::args.every]]
        period_ms = 1000.0 / fps
        for kind in args.kinds.split(","):
            rows = {"readout_ok": 0, "twin_ok": 0, "twin_flagged": [], "pos": [], "neg": [], "told_err": [],
                    "told_mover": 0, "told_camera": [], "n": 0}
            estimates = []
            for _ in range(args.segments):
                start = int(rng.integers(0, len(frames) - args.frames))
                segment = frames[start:start + args.frames]
                readout_ms = float(rng.uniform(6.0, min(33.0, 0.95 * period_ms)))
                r = readout_ms / period_ms
                move = trajectory(kind, rng, fps, args.frames, segment[0].shape[1])
                roll = None
                if args.roll > 0 and kind == "vibration":  # its own draws: the clips stay those of a run without
                    turn = 2 * args.roll / (CROP * segment[0].shape[1])
                    hz, phase = turns.uniform(4, 12), turns.uniform(0, 2 * np.pi)
                    roll = turning(turn, hz, fps, phase)
                rs, truth = render(segment, move, r, "rolling", args.noise, roll)
                told_rows, camera = told(rs, fps, analysis, readout_ms)
                rows["n"] += 1
                for row, cam, t in zip(told_rows, camera, truth, strict=True):
                    # the real movers' own shear is no part of the truth (the real camera's shutter is unknown):
                    # frames where a mover's told shear is the larger are counted apart
                    if t >= 1.0 and row["evidence"] == "camera-shear":
                        rows["told_err"].append(abs(row["rs_shear_px"] - t))
                    elif t >= 1.0:
                        rows["told_mover"] += 1
                    if t >= 1.0:
                        rows["told_camera"].append(abs(cam - t))
                if args.told_only:
                    continue
                gs, _ = render(segment, move, r, "global", args.noise, roll)
                rs_rows, rs_readout = analyze(rs, fps, analysis)
                gs_rows, gs_readout = analyze(gs, fps, analysis)
                est = rs_readout["ms"]
                rows["readout_ok"] += est is not None and abs(est - readout_ms) <= 0.25 * readout_ms
                rows["twin_ok"] += gs_readout["ms"] is None or gs_readout["ms"] <= 2.0
                rows["twin_flagged"].append(np.mean([row["flag"] for row in gs_rows]))
                for row, twin, t in zip(rs_rows, gs_rows, truth, strict=True):
                    if t >= 2.0:
                        rows["pos"].append(row["probability"])
                        rows["neg"].append(twin["probability"])
                twin = gs_readout["ms"]
                estimates.append(f"{readout_ms:.1f}->{'-' if est is None else f'{est:.1f}'}"
                                 f"/{'-' if twin is None else f'{twin:.1f}'}")
            auc = (roc_auc_score([1] * len(rows["pos"]) + [0] * len(rows["neg"]), rows["pos"] + rows["neg"])
                   if rows["pos"] else float("nan"))
            camera_err = np.array(rows["told_camera"])
            told_line = (f"told err {np.median(rows['told_err']) if rows['told_err'] else float('nan'):.3f} px "
                         f"({len(rows['told_err'])} frames; {rows['told_mover']} others a mover's); camera told err "
                         f"{np.median(camera_err) if len(camera_err) else float('nan'):.3f} px, within 1 px "
                         f"{np.mean(camera_err <= 1.0) if len(camera_err) else float('nan'):.2f} ({len(camera_err)})")
            if args.told_only:
                print(f"{video.name[:24]:24s} {kind:9s} {fps:.3g} frames/s {told_line}")
                continue
            print(f"{video.name[:24]:24s} {kind:9s} readouts {rows['readout_ok']}/{rows['n']} "
                  f"twins ok {rows['twin_ok']}/{rows['n']} twin frames flagged {np.mean(rows['twin_flagged']):.3f} "
                  f"frame AUC {auc:.3f} ({len(rows['pos'])} frames >= 2 px) {told_line}")
            print(f"    true->estimated/twin ms: {' '.join(estimates)}")


if __name__ == "__main__":
    main()
