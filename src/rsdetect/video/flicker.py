"""A fixed camera's readout from the lights' flicker, read row by row.

Physics: lights on the mains flicker at twice its frequency f (100 Hz on 50 Hz mains, 120 Hz on 60 Hz). A rolling
shutter reads row u (0 at the top, 1 at the bottom) of frame k at k / fps + u * readout, so each row gets its own
gain, g_k(u) = 1 + a sin(2 pi f (k / fps + u * readout) + phi): bands of f * readout cycles over the frame. Where the
frame rate does not divide f (120 Hz at 25 fps, 100 Hz at 30 fps) the bands drift by delta = f / fps cycles a frame
(taken to the nearest whole cycle), and the gain that puts a frame in the previous one's light (motion.lighting,
which the motion measurement takes out) is, to first order in a,

    log g_{k-1}(u) - log g_k(u) = A cos(2 pi nu u + 2 pi delta k + psi),     nu = f * readout

the same sinusoid over the rows, its phase advancing delta cycles a frame. So nu, and with it the readout, is
measured from the rows alone, on a camera that never moves: the one way here to know a fixed camera's readout
(its movers cannot give it: a mover at constant speed is sheared alike in every frame).

The mains frequency is not known, but the drift tells it: each candidate f (video.analysis.flicker_hz) predicts its
own delta, and a candidate whose delta is under flicker_min_drift gives no drifting bands (100 Hz at 25 fps), so it
cannot be what is seen. For each candidate left, one least-squares fit over every profile of the window (each
profile less its mean: an exposure step or the frame's overall flicker is no row dependence) on a grid of nu;
the best fit's nu / f is the readout. It is `estimated` only where the sinusoid explains at least
flicker_min_explained of the profiles' variance (a global shutter's profiles are flat: nothing drifts over the rows;
measured, 3%), on at least min_evidence_frames profiles, with a 95% interval (the same profile-likelihood rule as the
camera's own motion, frames the independent units) no wider than max_ci_frames and a readout under readout_max;
else unknown. Flicker that motion.lighting takes out leaves a profile on every frame; fainter flicker, which changes
no row by static_level, is sampled on a still camera every flicker_every frames while its readout is unknown
(motion.MotionMeter.push): lamps dimming by 2% still gave 24.1 ms for 24 (tests/test_flicker.py).
"""
from __future__ import annotations

import functools

import numpy as np

from rsdetect.config import VideoAnalysisParams
from rsdetect.video.readout import CHI2_1_95, Readout

NU_STEP = 0.005  # cycles over the frame: the grid of nu (a 0.04-0.05 ms step at 100-120 Hz)


def row_positions(rows: int, height: int) -> np.ndarray:
    """u of each row of a profile measured on `rows` rows (area averages) of a frame `height` native rows tall: its
    centre row over height - 1, as the readout's row times count them."""
    return ((np.arange(rows) + 0.5) * height / rows - 0.5) / max(height - 1, 1)


def drift(hz: float, fps: float) -> float:
    """The bands' drift in cycles a frame, in [-0.5, 0.5)."""
    return (hz / fps + 0.5) % 1.0 - 0.5


@functools.lru_cache(maxsize=8)
def row_waves(nu: tuple[float, ...], u: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """cos and sin of 2 pi nu u (nu, rows), each less its mean over the rows, and their products summed over the rows
    (cos^2, sin^2, cos sin): the same for every estimate of a camera (its frame size, rate and the candidate flicker
    fix them), so computed once; what is left per estimate is two matrix-vector products."""
    a = 2 * np.pi * np.asarray(nu)[:, None] * np.asarray(u)[None, :]
    ca, sa = np.cos(a), np.sin(a)
    ca, sa = ca - ca.mean(axis=1, keepdims=True), sa - sa.mean(axis=1, keepdims=True)
    return ca, sa, (ca * ca).sum(axis=1), (sa * sa).sum(axis=1), (ca * sa).sum(axis=1)


def explained(profiles: np.ndarray, frames: np.ndarray, u: np.ndarray, delta: float, nu: np.ndarray) -> np.ndarray:
    """For each nu: the sum of squares of `profiles` (n, rows; each less its mean) that the best
    A cos(2 pi nu u + 2 pi delta k + psi) explains, both A and psi free, the sinusoid less its own mean over the rows.

    cos(a + b) = cos a cos b - sin a sin b: summed over the frames first (b = 2 pi delta k), the normal equations of
    every nu are sums over the rows only."""
    b = 2 * np.pi * delta * frames
    cb, sb = np.cos(b), np.sin(b)
    sc, ss = profiles.T @ cb, profiles.T @ sb                          # (rows,)
    scc, sss, scs = float(cb @ cb), float(sb @ sb), float(cb @ sb)
    ca, sa, caa, saa, csa = row_waves(tuple(nu), tuple(u))
    p1 = ca @ sc - sa @ ss                                             # cos(a + b)'s products with the profiles
    p2 = ca @ ss + sa @ sc                                             # sin(a + b)'s
    g11 = caa * scc + saa * sss - 2 * csa * scs
    g22 = caa * sss + saa * scc + 2 * csa * scs
    g12 = caa * scs + csa * (scc - sss) - saa * scs
    det = np.maximum(g11 * g22 - g12 * g12, 1e-12)
    return (g22 * p1 * p1 - 2 * g12 * p1 * p2 + g11 * p2 * p2) / det


def flicker_readout(frames: np.ndarray, profiles: np.ndarray, height: int, fps: float,
                    p: VideoAnalysisParams) -> Readout:
    """The readout from the row gains of frames measured in the previous frame's light (frames: their indices;
    profiles: (n, rows) log gains, motion.FrameMotion.flicker; height: the frame's native rows). Unknown where the
    flicker does not tell it (module docstring)."""
    n = len(frames)
    if n < p.min_evidence_frames:
        return Readout(None, None, "unknown", n)
    centred = profiles - profiles.mean(axis=1, keepdims=True)
    total = float((centred * centred).sum())
    if total <= 0:
        return Readout(None, None, "unknown", n)
    u = row_positions(profiles.shape[1], height)
    frame_s = 1.0 / fps
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None  # (explained share, hz, nu grid, residuals)
    for hz in p.flicker_hz:
        delta = drift(hz, fps)
        if abs(delta) < p.flicker_min_drift:
            continue  # bands that stand still make no gain from frame to frame: not what is seen
        nu = np.arange(NU_STEP, hz * p.readout_max * frame_s + NU_STEP, NU_STEP)
        fit = explained(centred, frames.astype(float), u, delta, nu)
        share = float(fit.max()) / total
        if best is None or share > best[0]:
            best = (share, hz, nu, total - fit)
    if best is None or best[0] < p.flicker_min_explained:
        return Readout(None, None, "unknown", n)
    _, hz, nu, rss = best
    i = int(np.argmin(rss))
    inside = nu[rss <= rss[i] * (1 + CHI2_1_95 / n)]
    lo, hi = (float(inside.min()) - NU_STEP) / hz, (float(inside.max()) + NU_STEP) / hz  # seconds; a grid step wider
    if i == len(nu) - 1 or hi - lo > p.max_ci_frames * frame_s:
        return Readout(None, None, "unknown", n)  # at the searched limit, or too loose: the flicker does not tell it
    return Readout(float(nu[i]) / hz * 1000.0, (max(lo, 0.0) * 1000.0, hi * 1000.0), "estimated", n, "flicker")
