"""The camera's trajectory at sub-frame timing, and its readout estimated from it.

Physics: row y of frame k is read at k + r * y / (H - 1) (r = readout / frame period). Band b (centre row s_b in
[0, 1]) of frame k is displaced by the camera trajectory X at that time, so the frame-to-frame displacement that
rsdetect.video.motion measures for the band is

    D[k, b] = X(k + r s_b) - X(k - 1 + r s_b)         (both axes)

which is linear in X. X is a piecewise-linear curve with video.analysis.nodes_per_frame knots per frame interval
and a penalty (smoothness) on its second differences; for a given r it is one sparse least-squares solve on every
band sample of the window, so the rows' sub-frame timing resolves shakes that frame differences alone
under-sample (12 Hz at 25 fps), and a pan's start and stop pin its timing. The readout is the r on a grid
(0 .. readout_max) whose fit leaves the least residual; a wrong r puts band samples at wrong times and the smooth
curve cannot follow them.

Why this and not the earlier tries (measured, see the issue): a per-frame linear fit of band displacement against
the first frame gave readout within 25% on 12 of 35 clips (it reads the slope of a pan that holds as shear, and
is blind to the sub-frame timing of a shake); a free spline over r fitted noise. Here X is shared by all bands and
all frames, so noise in one band cannot be absorbed.

A least residual at the grid's top (readout_max, past one frame period) is no minimum: the readout is unknown.

The residual compared is that of the frames that carry the evidence: those the camera moved in and
evidence_margin_frames on each side (the still frames just before a start or after a stop pin its timing). A still
camera's other frames tell nothing of its readout, but a readout lets the curve follow, row by row, what its movers
leave in the band medians: summed over a real road's 60 still frames around a knock on its mount, that had read a
13.3 ms readout as 17.3 and put global-shutter twins at 11.9-14.2 ms (experiments/real_shake.py --kinds tap).

Confidence: frames are the independent units (flow errors are correlated within a frame), so the 95% interval
is the set of r whose residual stays within RSS_min + 3.84 s^2, s^2 a frame's residual variance at the best r over
those frames (a profile-likelihood interval with one parameter): the variance of the residual that is compared.
(Taken over every measured frame while the residual was every frame's, a still camera's noise had been added to every
r alike, and as a share of the moving frames alone it had widened the interval until panned real footage got no
readout.) Too few frames with camera motion,
an interval wider than max_ci_frames, or an interval reaching 0 around an estimate above zero_readout_ms, and the
readout is unknown: a value is never invented.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import factorized

from rsdetect.config import VideoAnalysisParams

CHI2_1_95 = 3.841  # 95% quantile of chi-square with one degree of freedom: the profile interval of one parameter
HUBER_ITERATIONS = 3  # reweighted least squares: the weights settle within three solves
HUBER_K = 1.345       # Huber's constant: 95% efficiency under Gaussian noise
MAD_TO_SD = 1.4826    # median absolute residual -> standard deviation under Gaussian noise
NOISE_FLOOR_PX = 0.01 # residual scale never below this: a noiseless synthetic fit must not weigh by ~0
RIDGE = 1e-6       # fixes the trajectory's free constant (every observation is a difference)
SMOOTHNESS_FPS = 25.0  # the frame rate video.analysis.shear_smoothness is given at (its unit, not a setting)
# an unknown readout's `why` where the camera hardly moved: most cameras (fixed ones) say this; their readout can
# still be configured, or read off flickering lamps (rsdetect.video.flicker)
TOO_LITTLE_MOTION = "too few frames of camera motion; a fixed camera: configure its readout_ms"


@dataclass(frozen=True)
class Readout:
    """A camera's readout: ms (None when unknown), 95% interval, where it comes from, frames it rests on, and for an
    estimate, what it was measured from."""
    ms: float | None
    ci_ms: tuple[float, float] | None
    source: str                      # configured | estimated | unknown
    evidence_frames: int
    method: str | None = None        # estimated: camera-motion (this module) | flicker (rsdetect.video.flicker)
    why: str | None = None           # unknown: why the footage did not tell it (what a user can act on)

    def as_dict(self) -> dict:
        return {"ms": None if self.ms is None else round(self.ms, 2),
                "ci_ms": None if self.ci_ms is None else [round(v, 2) for v in self.ci_ms],
                "source": self.source, "evidence_frames": self.evidence_frames, "method": self.method,
                "why": self.why}


def band_centres(bands: int) -> np.ndarray:
    return (np.arange(bands) + 0.5) / bands


@dataclass
class Trajectory:
    """A fitted camera trajectory: knots from t0 with spacing 1/q, in native px (x, y)."""
    t0: float
    q: int
    knots: np.ndarray                # (n, 2)
    rss: float
    frame_rss: np.ndarray            # (frames,): each frame's share of rss

    def at(self, t: np.ndarray) -> np.ndarray:
        """(len(t), 2) positions, linear between knots (clamped at the ends)."""
        grid = self.t0 + np.arange(len(self.knots)) / self.q
        return np.stack([np.interp(t, grid, self.knots[:, i]) for i in range(2)], axis=1)


def interp_matrix(times: np.ndarray, t0: float, q: int, n: int) -> sparse.csr_matrix:
    """Rows of linear-interpolation weights of each time on the knot grid."""
    pos = np.clip((times - t0) * q, 0, n - 1 - 1e-9)
    j = np.floor(pos).astype(int)
    w = pos - j
    rows = np.arange(len(times))
    return sparse.csr_matrix((np.concatenate([1 - w, w]), (np.concatenate([rows, rows]), np.concatenate([j, j + 1]))),
                             shape=(len(times), n))


def band_weights(texture: np.ndarray) -> np.ndarray:
    """(n, bands) weights of band samples: each band's texture (rsdetect.video.motion.band_texture) over its frame's
    most textured band's; 1 for a frame whose texture was not measured (a row of NaN: the camera stood still).

    A band's displacement is known as well as its texture allows (its error variance goes as 1 / texture), and a
    flat band's is made up: the solver fills it in, and what stays put in it (a sensor's fixed pattern, a codec's
    skipped blocks) holds it back, a lag the fit would read as a readout. Weighed against the frame's median band
    instead, a sky over 65% of the frame still gave a global shutter 28 ms (tests/test_video_analysis.py's sky at
    35-65%: the most textured band is the reference that keeps the twin at 0 ms or unknown throughout)."""
    w = np.ones(texture.shape)
    known = np.isfinite(texture).all(axis=1)
    if known.any():
        w[known] = texture[known] / np.maximum(texture[known].max(axis=1, keepdims=True), 1e-12)
    return w


def shear_smoothness(p: VideoAnalysisParams, fps: float) -> float:
    """The smoothness of the trajectory a frame's shear is read off once the readout is given: shear_smoothness at
    SMOOTHNESS_FPS, x (fps / SMOOTHNESS_FPS)^2, at most the readout search's.

    The readout search needs a stiff curve (a limber one fits noise with a readout: params.yaml smoothness). Given
    the readout, the rows' timing within each frame is what tells the shear, and a stiff curve overrules it where
    the motion turns over between two frames' readouts: more so the fewer frames a second (a 4-12 Hz shake at
    6-20 frames/s: told shear 0.2-1.8 px off with 10, 0.06-0.6 with this; params.yaml shear_smoothness)."""
    return min(p.smoothness, p.shear_smoothness * (fps / SMOOTHNESS_FPS) ** 2)


def fit_trajectory(frames: np.ndarray, disp: np.ndarray, r: float, p: VideoAnalysisParams,
                   weights: np.ndarray | None = None, smoothness: float | None = None) -> Trajectory:
    """The smooth trajectory X best explaining disp[i, b] = X(frames[i] + r s_b) - X(frames[i] - 1 + r s_b),
    each band sample weighted by `weights` (n, bands; band_weights) where given; `smoothness`: the penalty on its
    second differences (default p.smoothness, the readout search's)."""
    s = band_centres(disp.shape[1])
    t0 = float(frames.min()) - 1.0
    n = int(np.ceil((frames.max() + r - t0) * p.nodes_per_frame)) + 2
    t_late = (frames[:, None] + r * s[None, :]).ravel()
    a = interp_matrix(t_late, t0, p.nodes_per_frame, n) - interp_matrix(t_late - 1.0, t0, p.nodes_per_frame, n)
    second = sparse.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(n - 2, n))
    penalty = (p.smoothness if smoothness is None else smoothness) * (second.T @ second) + RIDGE * sparse.identity(n)
    d = disp.reshape(-1, 2)
    seen = ~np.isnan(d).any(axis=1)  # a band that could not be measured is NaN
    a, d = a[seen], d[seen]
    prior = np.ones(len(d)) if weights is None else weights.reshape(-1)[seen]
    weights = prior
    for _ in range(HUBER_ITERATIONS):  # flow fails now and then (a band mistaken by the solver): Huber weights
        wa = a.multiply(weights[:, None]).tocsr()
        solve = factorized((a.T @ wa + penalty).tocsc())  # one factorisation for both axes
        rhs = wa.T @ d
        knots = np.stack([solve(rhs[:, i]) for i in range(2)], axis=1)
        res = np.hypot(*(a @ knots - d).T)
        scale = HUBER_K * max(float(np.median(res)) * MAD_TO_SD, NOISE_FLOOR_PX)
        weights = prior * np.minimum(1.0, scale / np.maximum(res, 1e-12))
    loss = np.zeros(len(seen))
    loss[seen] = prior * np.minimum(res, scale) * (2 * res - np.minimum(res, scale))  # Huber loss (x2)
    frame_rss = loss.reshape(disp.shape[:2]).sum(axis=1)
    return Trajectory(t0, p.nodes_per_frame, knots, float(frame_rss.sum()), frame_rss)


def evidence_frames(moving: np.ndarray, margin: int) -> np.ndarray:
    """The frames the camera moved in and `margin` frames on each side of them (in the window's order)."""
    near = moving.copy()
    for k in range(1, min(margin, len(moving)) + 1):
        near[k:] |= moving[:-k]
        near[:-k] |= moving[k:]
    return near


def estimate_readout(frames: np.ndarray, disp: np.ndarray, moving: np.ndarray, fps: float,
                     p: VideoAnalysisParams, weights: np.ndarray | None = None) -> Readout:
    """The readout from band displacements of consecutive frames (frames, disp: (n, bands, 2); moving: frames
    whose camera moved; weights: (n, bands), band_weights). Unknown where the evidence is too thin or too loose."""
    evidence = int(moving.sum())
    if evidence < p.min_evidence_frames:
        return Readout(None, None, "unknown", evidence, why=TOO_LITTLE_MOTION)
    if fps < p.min_readout_fps:
        # the rows sample the trajectory only within each frame's readout, and at a low frame rate a shake turns
        # over in the rest of the period, where the smooth curve guesses (video.analysis.min_readout_fps: measured
        # wrong readouts below it)
        return Readout(None, None, "unknown", evidence,
                       why=f"{fps:.3g} frames/s, under video.analysis.min_readout_fps ({p.min_readout_fps:g}): "
                           "camera motion tells no readout there")
    grid = np.linspace(0.0, p.readout_max, p.readout_steps)
    fits = [fit_trajectory(frames, disp, r, p, weights) for r in grid]
    near = evidence_frames(moving, p.evidence_margin_frames)  # the residual and its noise: the module docstring
    rss = np.array([fit.frame_rss[near].sum() for fit in fits])
    best = int(np.argmin(rss))
    noise = fits[best].frame_rss[near].sum() / int(near.sum())
    inside = grid[rss <= rss[best] + CHI2_1_95 * noise]
    lo, hi = float(inside.min()), float(inside.max())
    r_hat = refine(grid, rss, best)
    if hi >= grid[-1]:
        # the evidence does not bound the readout within the searched ones (which reach past one frame period,
        # the most a readout can be): what moves is not the camera seen through a readout (a mover filling the
        # frame read as the background gave 1.2 frames on a global-shutter twin; another, 1.16 frames with an
        # interval reaching the top), so the footage does not tell the readout
        return Readout(None, None, "unknown", evidence, why="no readout within a frame period explains the motion")
    if hi - lo > p.max_ci_frames or (lo == 0.0 and r_hat * 1000.0 / fps > p.zero_readout_ms):
        # too loose, or consistent with a global shutter while the point estimate says otherwise: either way the
        # footage does not tell the readout
        return Readout(None, None, "unknown", evidence, why="the camera's motion bounds it too loosely")
    ms = 1000.0 / fps
    step = grid[1] - grid[0]  # the interval is known to the grid's resolution: one step wider on each side
    lo, hi = float(max(min(lo, r_hat) - step, 0.0)), float(max(hi, r_hat) + step)
    return Readout(r_hat * ms, (lo * ms, hi * ms), "estimated", evidence, "camera-motion")


def refine(grid: np.ndarray, rss: np.ndarray, best: int) -> float:
    """The minimum of the parabola through the best grid point and its neighbours (the grid point at an end)."""
    if best == 0 or best == len(grid) - 1:
        return float(grid[best])
    y0, y1, y2 = rss[best - 1:best + 2]
    curvature = y0 - 2 * y1 + y2
    step = grid[1] - grid[0]
    return float(grid[best] + (0.5 * (y0 - y2) / curvature * step if curvature > 0 else 0.0))
