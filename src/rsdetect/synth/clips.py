"""Rolling-shutter / global-shutter twin clips rendered from one photo, with per-frame truth.

Time t is in frame intervals. Row y of frame k of a rolling-shutter (RS) clip is read at k + r * y / (H - 1), where
r = readout_ms * fps / 1000; its global-shutter (GS) twin reads every row of frame k at k + r / 2 (the RS frame's
mid-row instant), so both clips follow the same trajectory and differ only in the row dependence. What moves:

- vibration: the camera shakes, image displacement A sin(2 pi f t / fps + phase) along a random direction;
- pan: the camera pans sideways after `still_frames` still frames, speed ramping up, holding, ramping down;
- person: a COCO person (polygon) is cut out, the hole inpainted, and moved sideways at a constant speed;
- static: nothing moves;
- flicker: a person as above, under lamps on the mains (`lit`): each row integrates their flicker over its exposure,
  ending when the row is read, so a rolling shutter's rows get gains of their own (a fixed camera's readout can be
  read off them: rsdetect.video.flicker) and its global-shutter twin's rows all the same one.

Magnitudes are native pixels: the output frame is a crop of the photo (video.clips.frame_fraction of its sides),
the rest of the photo is room for the camera to travel, so no border is ever invented. Each frame gets its own
sensor noise and JPEG round trip, the same for a clip and its twin.

Truth per frame: `rs_shear_px`, the largest distance between the displacements of two rows of what moves (the whole
frame for the camera, the person's rows for a person; rsdetect.shutter.shear_extent; 0 for a GS twin) and
`motion_px`, the largest image speed (px/frame at mid-readout).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from rsdetect.config import VideoClipParams
from rsdetect.errors import RsdetectError
from rsdetect.shutter import fill_person_hole, move_person, shear_extent, warp_rows

CLIP_KINDS = ("vibration", "pan", "person", "static", "flicker", "roll")  # new kinds last: the others' draws stay
Trajectory = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # times (frames) -> (dx, dy) px


@dataclass
class Clip:
    """A rendered clip: frames (BGR uint8, native px) and what is true of each."""
    kind: str
    shutter: str                    # rolling | global
    fps: float
    readout_ms: float               # the RS clip's readout (its twin has none: 0 would be its truth)
    frames: list[np.ndarray]
    truth: list[dict]               # per frame: rs_shear_px, motion_px
    params: dict = field(default_factory=dict)  # what was drawn (amplitude, frequency, speed, ...)


def vibration(amplitude: float, hz: float, fps: float, phase: float, direction: float) -> Trajectory:
    def at(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = amplitude * np.sin(2 * np.pi * hz * np.asarray(t, np.float64) / fps + phase)
        return s * np.cos(direction), s * np.sin(direction)
    return at


def tap(amplitude: float, hz: float, fps: float, decay_s: float, start: float, direction: float) -> Trajectory:
    """A knock on the mount (a door slammed, a truck passing): still until frame `start`, then ringing at `hz`, dying
    away with time constant `decay_s`. A knock is an impulse: the ringing starts from rest at full speed."""
    def at(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        since = np.clip(np.asarray(t, np.float64) - start, 0, None) / fps
        s = amplitude * np.exp(-since / decay_s) * np.sin(2 * np.pi * hz * since)
        return s * np.cos(direction), s * np.sin(direction)
    return at


def pan(peak: float, start: float, ramp: float, hold: float, direction: float) -> Trajectory:
    """Start-hold-stop: speed 0 until `start`, linear up to `peak` over `ramp`, `hold`, linear down over `ramp`."""
    knots = np.array([start, start + ramp, start + ramp + hold, start + 2 * ramp + hold])
    # distance travelled is the integral of the trapezoidal speed: piecewise quadratic, linear in the hold
    def distance(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, np.float64)
        up = np.clip(t - knots[0], 0, ramp)
        held = np.clip(t - knots[1], 0, hold)
        down = np.clip(t - knots[2], 0, ramp)
        return peak * (up * up / (2 * ramp) + held + down - down * down / (2 * ramp))

    def at(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = distance(t)
        return d * np.cos(direction), d * np.sin(direction)
    return at


def still(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.zeros_like(np.asarray(t, np.float64))
    return z, z


def frame_times(k: int, height: int, r: float, shutter: str) -> np.ndarray:
    """Time each row of frame k is read at: rolling k + r * y / (H - 1), global k + r / 2 for every row."""
    if shutter == "global":
        return np.full(height, k + r / 2)
    return k + r * np.arange(height, dtype=np.float64) / max(height - 1, 1)


def speed_at(trajectory: Trajectory, t: float) -> float:
    """Image speed px/frame over the frame interval ending at t (what frame-to-frame motion sees)."""
    x, y = trajectory(np.array([t - 1.0, t]))
    return float(np.hypot(x[1] - x[0], y[1] - y[0]))


def degrade(frame: np.ndarray, rng: np.random.Generator, noise_sigma: float, jpeg_quality: int) -> np.ndarray:
    """Sensor noise and a JPEG round trip: real footage is never noiseless."""
    noisy = np.clip(frame + rng.normal(0, noise_sigma, frame.shape), 0, 255).astype(np.uint8)
    _, buf = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RsdetectError("video clips: a frame's own JPEG does not decode")
    return decoded


def crop_box(image: np.ndarray, fraction: float) -> tuple[int, int, int, int]:
    h, w = image.shape[:2]
    cw, ch = int(w * fraction) // 2 * 2, int(h * fraction) // 2 * 2
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def render_camera(image: np.ndarray, trajectory: Trajectory, n: int, r: float, shutter: str,
                  box: tuple[int, int, int, int]) -> tuple[list[np.ndarray], list[dict]]:
    """Frames of a moving camera: each output row is the photo's row displaced by the trajectory at its time."""
    _, y0, _, h = box
    frames = []
    for k in range(n):
        dx, dy = trajectory(frame_times(k, h, r, shutter))
        full_dx, full_dy = np.zeros(image.shape[0]), np.zeros(image.shape[0])
        full_dx[y0:y0 + h], full_dy[y0:y0 + h] = dx, dy
        frames.append(warp_rows(image, full_dx, full_dy, box=box))
    return frames, camera_truth(trajectory, n, r, shutter, h)


def camera_truth(trajectory: Trajectory, n: int, r: float, shutter: str, h: int) -> list[dict]:
    """Per frame, the shear the camera's translation gives its rows (native px) and its image speed."""
    return [{"rs_shear_px": shear_extent(*trajectory(frame_times(k, h, r, shutter))),
             "motion_px": speed_at(trajectory, k + r / 2)} for k in range(n)]


def turning(radians: float, hz: float, fps: float, phase: float) -> Callable[[np.ndarray], np.ndarray]:
    """A mount's roll about the optical axis, radians at time t (frames): a vibration of `radians` at `hz`."""
    at = vibration(radians, hz, fps, phase, 0.0)
    return lambda t: at(t)[0]


def turn_rows(image: np.ndarray, box: tuple[int, int, int, int], dx: np.ndarray, dy: np.ndarray,
              th: np.ndarray) -> np.ndarray:
    """The box of `image`, each of its rows shifted by (dx, dy) and turned by th radians about the box's centre:
    out(p) = in(R(-th) (p - c - d) + c), row by row (render_rolled's frames; real footage in tests and
    experiments/real_shake.py)."""
    x0, y0, w, h = box
    cx, cy = x0 + (w - 1) / 2, y0 + (h - 1) / 2
    xs, ys = np.meshgrid(np.arange(x0, x0 + w, dtype=np.float64), np.arange(y0, y0 + h, dtype=np.float64))
    th = np.asarray(th)[:, None]
    px, py = xs - cx - dx[:, None], ys - cy - dy[:, None]
    map_x = (np.cos(th) * px + np.sin(th) * py + cx).astype(np.float32)
    map_y = (-np.sin(th) * px + np.cos(th) * py + cy).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def render_rolled(image: np.ndarray, trajectory: Trajectory, roll: Callable[[np.ndarray], np.ndarray], n: int,
                  r: float, shutter: str, box: tuple[int, int, int, int]) -> list[np.ndarray]:
    """Frames of a mount that turns about the crop's centre by roll(t) radians as it shifts by trajectory(t), each
    row at its read time (frame_times): out(p) = in(R(-roll) (p - c - d) + c). A roll moves every shutter's rows
    apart (it is measured apart: rsdetect.video.motion.column_slopes); rendered for the `video` stage's roll clips,
    tests and experiments/roll_shake.py."""
    frames = []
    for k in range(n):
        t = frame_times(k, box[3], r, shutter)
        frames.append(turn_rows(image, box, *trajectory(t), roll(t)))
    return frames


def mains_wave(cycles: np.ndarray) -> np.ndarray:
    """A lamp's light over its flicker's cycles, 0 to 1: |sin| of the mains (an incandescent or a plain LED driver)."""
    return np.abs(np.sin(np.pi * cycles))


def lit(frame: np.ndarray, row_s: np.ndarray, hz: float, depth: float, exposure_ms: float,
        wave: Callable[[np.ndarray], np.ndarray] = mains_wave) -> np.ndarray:
    """`frame` under lamps flickering at `hz` (twice the mains), their light 1 - depth to 1 of its peak following
    `wave` over each cycle, each row integrating it over exposure_ms ending at its read time `row_s` (seconds)."""
    t = row_s[:, None] - np.linspace(0.0, exposure_ms / 1000.0, EXPOSURE_STEPS)[None, :]
    light = (1.0 - depth + depth * wave(hz * t)).mean(axis=1)
    return np.clip(frame * light[:, None, None], 0, 255).astype(np.uint8)


def person_mask(image: np.ndarray, polygons: list[list[float]]) -> np.ndarray:
    h, w = image.shape[:2]
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    return mask_utils.decode(rle).astype(np.float32)


def render_person(image: np.ndarray, alpha: np.ndarray, trajectory: Trajectory, n: int, r: float, shutter: str,
                  box: tuple[int, int, int, int]) -> tuple[list[np.ndarray], list[dict]]:
    """A person moved over the inpainted photo; the camera stands still. Rows are timed on the output frame."""
    x0, y0, w, h = box
    background = fill_person_hole(image, alpha)
    out_rows = np.arange(image.shape[0]) - y0  # photo row -> output row (timed as such; outside rows clamp)
    frames, truth = [], []
    for k in range(n):
        t = frame_times(k, h, r, shutter)[np.clip(out_rows, 0, h - 1)]
        dx, dy = trajectory(t)
        moved = warp_rows(alpha, dx, dy, border=cv2.BORDER_CONSTANT)
        frame = move_person(image, background, moved, dx, dy)[y0:y0 + h, x0:x0 + w]
        rows = np.flatnonzero((moved[y0:y0 + h, x0:x0 + w] > 0.5).any(axis=1))
        visible = rows.size > 0
        truth.append({"rs_shear_px": shear_extent(dx[y0:y0 + h], dy[y0:y0 + h], rows) if visible else 0.0,
                      "motion_px": speed_at(trajectory, k + r / 2) if visible else 0.0})
        frames.append(np.ascontiguousarray(frame))
    return frames, truth


def usable_person(anns: list[dict], height: int, width: int, min_area: float) -> list[list[float]] | None:
    """The polygons of the largest person of at least min_area px^2 (not crowd), or None."""
    best, best_area = None, min_area
    for ann in anns:
        seg = ann.get("segmentation")
        if ann.get("iscrowd") or not isinstance(seg, list) or not seg:
            continue
        area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(seg, height, width))))
        if area >= best_area:
            best, best_area = seg, area
    return best


def draw_trajectory(kind: str, rng: np.random.Generator, p: VideoClipParams, fps: float,
                    box: tuple[int, int, int, int], image_shape: tuple[int, ...]) -> tuple[Trajectory, dict]:
    """The motion of a clip of `kind`, drawn from the params; pans are fitted into the photo's spare width."""
    if kind in ("vibration", "roll"):  # a roll clip's shake; its roll is drawn after (render_twins)
        drawn = {"amplitude_px": float(rng.uniform(*p.vibration_px)), "hz": float(rng.uniform(*p.vibration_hz)),
                 "phase": float(rng.uniform(0, 2 * np.pi)), "direction": float(rng.uniform(0, np.pi))}
        return vibration(drawn["amplitude_px"], drawn["hz"], fps, drawn["phase"], drawn["direction"]), drawn
    if kind == "pan":
        travel = image_shape[1] - box[2] - 2 * TRAVEL_SLACK_PX  # the spare width the crop can slide over
        peak, ramp = float(rng.uniform(*p.pan_px)), float(rng.uniform(*p.pan_ramp_frames))
        peak = min(peak, travel / ramp)  # a narrow photo: a slower pan still starts and stops inside it
        hold = float(np.clip(travel / peak - ramp, 0, p.frames - p.still_frames - 2 * ramp))
        direction = float(rng.choice([0.0, np.pi]) + rng.normal(0, PAN_TILT_SD))
        drawn = {"peak_px": peak, "ramp_frames": ramp, "hold_frames": hold, "direction": direction}
        start = float(p.still_frames)
        base = pan(peak, start, ramp, hold, direction)
        # centred on the travel: the crop slides from one side of the spare width to the other
        end_x, end_y = base(np.array([start + 2 * ramp + hold]))
        return (lambda t: (base(t)[0] - end_x[0] / 2, base(t)[1] - end_y[0] / 2)), drawn
    if kind in ("person", "flicker"):
        speed = float(rng.uniform(*p.person_px))
        direction = float(rng.choice([0.0, np.pi]) + rng.normal(0, PAN_TILT_SD))
        drawn = {"speed_px": speed, "direction": direction}
        mid = p.frames / 2  # the person crosses its own place in the photo halfway through
        return (lambda t: (speed * (np.asarray(t) - mid) * np.cos(direction),
                           speed * (np.asarray(t) - mid) * np.sin(direction))), drawn
    return still, {}


EXPOSURE_STEPS = 16  # instants a row's exposure is integrated over (`lit`): 0.06-0.25 ms apart at 1-4 ms
TRAVEL_SLACK_PX = 4   # kept free at each side of a pan's travel: bilinear sampling reads one pixel beyond
PAN_TILT_SD = 0.1     # radians: cameras pan mostly sideways


def render_twins(image: np.ndarray, kind: str, rng: np.random.Generator, p: VideoClipParams,
                 anns: list[dict] | None = None) -> tuple[Clip, Clip]:
    """A rolling-shutter clip of `kind` and its global-shutter twin, drawn from `rng`.

    ValueError for a person clip from a photo without a usable person (the caller counts and skips it).
    """
    fps = float(rng.uniform(*p.fps))
    readout_ms = float(rng.uniform(*p.readout_ms))
    r = readout_ms * fps / 1000.0
    box = crop_box(image, p.frame_fraction)
    trajectory, drawn = draw_trajectory(kind, rng, p, fps, box, image.shape)
    alpha = None
    if kind in ("person", "flicker"):
        height, width = image.shape[:2]
        polygons = usable_person(anns or [], height, width, p.min_person_area)
        if polygons is None:
            raise ValueError("no person of at least video.clips.min_person_area")
        alpha = person_mask(image, polygons)
    noise = [(float(rng.uniform(*p.noise_sigma)), int(rng.uniform(*p.jpeg_quality))) for _ in range(p.frames)]
    noise_seed = int(rng.integers(2 ** 31))
    if kind == "flicker":  # drawn last: the walker and its noise are those a person clip of the same rng gets
        drawn = {**drawn, "flicker_hz": float(rng.choice(p.flicker_hz)), "flicker_depth": float(rng.uniform(
            *p.flicker_depth)), "exposure_ms": float(rng.uniform(*p.flicker_exposure_ms))}
    if kind == "roll":  # drawn last: the shake is a vibration clip's of the same rng
        drawn = {**drawn, "roll_px": float(rng.uniform(*p.roll_px)), "roll_hz": float(rng.uniform(*p.vibration_hz)),
                 "roll_phase": float(rng.uniform(0, 2 * np.pi))}
        roll = turning(drawn["roll_px"] / (box[2] / 2), drawn["roll_hz"], fps, drawn["roll_phase"])
    clips = []
    for shutter in ("rolling", "global"):
        if alpha is not None:
            frames, truth = render_person(image, alpha, trajectory, p.frames, r, shutter, box)
        elif kind == "roll":
            # the truth is the translation's shear: the roll turns every shutter's rows alike but for its own
            # change within the readout, which the analysis takes out with the roll (it is not counted either way)
            frames = render_rolled(image, trajectory, roll, p.frames, r, shutter, box)
            truth = camera_truth(trajectory, p.frames, r, shutter, box[3])
        else:
            frames, truth = render_camera(image, trajectory, p.frames, r, shutter, box)
        if kind == "flicker":
            frames = [lit(f, frame_times(k, f.shape[0], r, shutter) / fps, drawn["flicker_hz"], drawn["flicker_depth"],
                          drawn["exposure_ms"]) for k, f in enumerate(frames)]
        frame_rng = np.random.default_rng(noise_seed)  # the twin gets the same noise, frame by frame
        frames = [degrade(f, frame_rng, s, q) for f, (s, q) in zip(frames, noise, strict=True)]
        if shutter == "global":
            truth = [{**t, "rs_shear_px": 0.0} for t in truth]
        clips.append(Clip(kind, shutter, fps, readout_ms, frames, truth, drawn))
    return clips[0], clips[1]
