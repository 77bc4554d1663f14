"""A fixed camera's readout from its lights' flicker (rsdetect.video.flicker): the fit on row gains the physics gives,
and the whole video path on clips of a still scene and a walker under mains-powered lights, read row by row."""
from __future__ import annotations

import numpy as np
import pytest

from rsdetect.synth.clips import crop_box, degrade, frame_times, lit, render_camera, vibration
from rsdetect.video.analyze import analyze
from rsdetect.video.flicker import drift, flicker_readout, row_positions

from conftest import mains_clip, params_group, texture


@pytest.fixture(scope="module")
def analysis():
    return params_group("video.analysis")


def row_gains(readout_ms: float, hz: float, fps: float, frames: int, rows: int = 60, height: int = 480,
              noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """log g_{k-1}(u) - log g_k(u) of a sinusoidal flicker of 10%, rows of a frame read in readout_ms (flicker.py's
    model, without its first-order step)."""
    rng = np.random.default_rng(seed)
    u = row_positions(rows, height)

    def gain(k: int) -> np.ndarray:
        return 1 + 0.1 * np.sin(2 * np.pi * hz * (k / fps + u * readout_ms / 1000) + 0.7)

    return np.array([np.log(gain(k - 1)) - np.log(gain(k)) + rng.normal(0, noise, rows) for k in range(1, frames)])


@pytest.mark.parametrize(("readout_ms", "hz", "fps"), [(8.0, 120.0, 25.0), (20.0, 120.0, 25.0), (31.0, 100.0, 30.0),
                                                       (16.0, 100.0, 15.0)])
def test_the_rows_gains_give_the_readout_and_the_drift_tells_the_mains(analysis, readout_ms, hz, fps):
    gains = row_gains(readout_ms, hz, fps, 40, noise=0.01)
    got = flicker_readout(np.arange(1, 40, dtype=float), gains, 480, fps, analysis)
    assert got.source == "estimated" and got.method == "flicker" and got.evidence_frames == 39
    assert abs(got.ms - readout_ms) <= 0.01 * readout_ms and got.ci_ms[0] <= got.ms <= got.ci_ms[1]
    # the other mains' lights would drift otherwise (or not at all): only the one seen fits
    assert abs(drift(hz, fps)) >= analysis.flicker_min_drift


def test_flicker_that_does_not_drift_or_does_not_vary_over_the_rows_tells_no_readout(analysis):
    frames = np.arange(1, 40, dtype=float)
    # 100 Hz at 25 fps: the bands stand still, frame to frame nothing changes but noise
    still = row_gains(20.0, 100.0, 25.0, 40, noise=0.01)
    assert flicker_readout(frames, still, 480, 25.0, analysis).source == "unknown"
    # a global shutter: the whole frame's gain changes, the same on every row (each profile less its mean: noise)
    flat = row_gains(0.0, 120.0, 25.0, 40, noise=0.01)
    assert flicker_readout(frames, flat, 480, 25.0, analysis).ms is None
    # too few frames to rest on
    few = analysis.min_evidence_frames - 1
    assert flicker_readout(frames[:few], row_gains(20.0, 120.0, 25.0, 40)[:few], 480, 25.0, analysis).ms is None


def test_a_fixed_camera_under_flickering_lights_gets_its_readout(analysis):
    # Nothing but the walker moves: without the lights the readout of this camera is unknown (a walker at constant
    # speed is sheared alike in every frame), and its frames are ranked, never flagged
    rows, readout = analyze(mains_clip(24.0, "rolling", walker=True), 25.0, analysis)
    assert readout["source"] == "estimated" and readout["method"] == "flicker", readout
    assert abs(readout["ms"] - 24.0) <= 0.05 * 24.0 and readout["ci_ms"][0] <= 24.0 <= readout["ci_ms"][1], readout
    # with it, the walker's shear is measured: 6 px/frame x 24 ms / 40 ms x 120 of 480 rows = 0.9 px
    walked = [r for r in rows if r["movers"]]
    assert walked and all(r["rs_shear_px"] is not None for r in walked)
    assert 0.6 <= float(np.median([r["rs_shear_px"] for r in walked])) <= 1.3
    # 100 Hz at 25 fps: the bands stand still in the frame, nothing tells them from the scene's own shading
    still, readout = analyze(mains_clip(24.0, "rolling", walker=True, hz=100.0), 25.0, analysis)
    assert readout["ms"] is None and not any(r["flag"] for r in still)


@pytest.mark.parametrize("depth", [0.02, 0.1])
def test_faint_flicker_sampled_every_few_frames_still_gives_the_readout(analysis, depth):
    # Lamps dimming by only 2% or 10% change no row by static_level: lighting() leaves such frames as they are, and
    # until 2026-12-07 they gave no profile (only 20% and more did). A still camera's row gains are now sampled every
    # flicker_every frames while its readout is unknown: 24.12 ms (21.71-26.58) at 2%, from 9 of 80 frames.
    rows, readout = analyze(mains_clip(24.0, "rolling", depth=depth, exposure_ms=1.0, frames=80), 25.0, analysis)
    assert readout["method"] == "flicker" and abs(readout["ms"] - 24.0) <= 0.05 * 24.0, readout
    assert readout["evidence_frames"] <= 80 // analysis.flicker_every + 1  # sampled, not every frame
    # the same lamps through a global shutter, and no lamps at all: nothing to read
    for clip in (mains_clip(24.0, "global", depth=depth, exposure_ms=1.0, frames=80),
                 mains_clip(24.0, "rolling", depth=0.0, frames=80)):
        rows, readout = analyze(clip, 25.0, analysis)
        assert readout["ms"] is None and not any(r["flag"] for r in rows), readout


LAMPS = {  # a cycle of the flicker (0 to 1) -> light, 0 to 1: other lamps than |sin|, rich in harmonics
    "square": lambda x: (x % 1.0 < 0.5).astype(float),       # a switching driver
    "phosphor": lambda x: np.exp(-(x % 1.0) / 0.25),           # a fluorescent's phosphor decaying after each peak
    "pwm 20%": lambda x: (x % 1.0 < 0.2).astype(float),      # an LED dimmed by pulse width
}


@pytest.mark.parametrize("lamp", sorted(LAMPS))
def test_lamps_rich_in_harmonics_give_the_readout_too(analysis, lamp):
    # the fit is of the flicker's fundamental; harmonics only widen the interval (|sin|: 23.58-24.46 ms at 2 ms;
    # square 23.75-24.25, phosphor 23.04-24.96, pwm 22.62-25.38, measured)
    _, readout = analyze(mains_clip(24.0, "rolling", exposure_ms=2.0, wave=LAMPS[lamp]), 25.0, analysis)
    assert readout["method"] == "flicker" and abs(readout["ms"] - 24.0) <= 0.05 * 24.0, readout
    _, twin = analyze(mains_clip(24.0, "global", exposure_ms=2.0, wave=LAMPS[lamp]), 25.0, analysis)
    assert twin["ms"] is None, twin


def test_a_global_shutter_under_the_same_lights_gets_no_readout(analysis):
    rows, readout = analyze(mains_clip(24.0, "global", walker=True), 25.0, analysis)
    assert readout["ms"] is None or readout["ms"] <= analysis.zero_readout_ms, readout
    assert not any(r["flag"] for r in rows)



@pytest.mark.parametrize("shutter", ["rolling", "global"])
def test_a_shaking_camera_under_flickering_lamps_keeps_the_narrower_readout(analysis, shutter):
    # Both evidences at once: the camera's shake and the lamps' bands (taken out of the motion as lighting). Rolling:
    # both tell about 24 ms, the flicker's interval the narrower (camera motion alone: 23.9 ms, 22.9-25.0);
    # global: the flicker's rows are flat, the shake tells 0 ms
    fps, r = 25.0, 24.0 * 25.0 / 1000
    image = texture(np.random.default_rng(5))
    frames, _ = render_camera(image, vibration(3.0, 7.0, fps, 0.3, 0.2), 40, r, shutter, crop_box(image, 0.7))
    rng = np.random.default_rng(0)
    frames = [degrade(lit(f, frame_times(k, f.shape[0], r, shutter) / fps, 120.0, 0.3, 2.0), rng, 2.0, 90)
              for k, f in enumerate(frames)]
    rows, readout = analyze(frames, fps, analysis)
    if shutter == "rolling":
        assert readout["method"] == "flicker" and abs(readout["ms"] - 24.0) <= 0.05 * 24.0, readout
        assert readout["ci_ms"][1] - readout["ci_ms"][0] < 2.0
    else:
        assert readout["method"] == "camera-motion" and readout["ms"] <= analysis.zero_readout_ms, readout
        assert not any(row["flag"] for row in rows)
