"""The readout estimate (rsdetect.video.readout) on band displacements rendered here by its own physics: band b of
frame k moves by X(k + r s_b) - X(k - 1 + r s_b), X a camera shake, plus flow noise."""
from __future__ import annotations

import numpy as np
import pytest

from rsdetect.synth.clips import pan, vibration
from rsdetect.video.readout import band_centres, band_weights, estimate_readout

from conftest import params_group

FPS = 25.0
FRAMES = 40
SHAKE = vibration(3.0, 7.0, FPS, 0.3, 0.2)
FLOW_NOISE_PX = 0.05  # about DIS's band-median error on the video stage's clips


@pytest.fixture(scope="module")
def analysis():
    return params_group("video.analysis")


def shake_bands(r: float, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices 1.. and their band displacements (frames, bands, 2) for readout r (frame intervals)."""
    frames = np.arange(1, FRAMES, dtype=float)
    t = frames[:, None] + r * band_centres(bands)[None, :]
    x1, y1 = SHAKE(t)
    x0, y0 = SHAKE(t - 1.0)
    noise = np.random.default_rng(0).normal(0, FLOW_NOISE_PX, (len(frames), bands, 2))
    return frames, np.stack([x1 - x0, y1 - y0], axis=-1) + noise


@pytest.mark.parametrize("r", [0.3, 0.6, 1.0])
def test_a_readout_within_one_frame_is_estimated(analysis, r):
    frames, disp = shake_bands(r, analysis.bands)
    got = estimate_readout(frames, disp, np.ones(len(frames), bool), FPS, analysis)
    truth_ms = r * 1000.0 / FPS
    assert got.source == "estimated" and abs(got.ms - truth_ms) <= 0.1 * truth_ms
    assert got.ci_ms[0] <= truth_ms <= got.ci_ms[1]


@pytest.mark.parametrize("r", [1.5, 2.5])
def test_motion_that_no_readout_in_range_explains_gives_unknown(analysis, r):
    # rows spread over more than a frame period: no sensor reads so (a mover filling the frame, read as the
    # background, did). The least residual sits at the grid's top; the readout there used to be reported.
    assert r > analysis.readout_max
    frames, disp = shake_bands(r, analysis.bands)
    got = estimate_readout(frames, disp, np.ones(len(frames), bool), FPS, analysis)
    assert got.source == "unknown" and got.ms is None and got.evidence_frames == len(frames)


def test_a_camera_recording_under_min_readout_fps_gets_no_readout_from_its_motion(analysis):
    # Its rows sample the trajectory within each frame's readout only; the rest of a long frame period the smooth
    # curve guesses, and real footage shaken at 12.5-15 frames/s got wrong readouts (params.yaml). The same band
    # evidence, said to come at 25 frames/s, gives one; at 12.5, none is claimed.
    frames, disp = shake_bands(0.3, analysis.bands)
    assert estimate_readout(frames, disp, np.ones(len(frames), bool), 25.0, analysis).source == "estimated"
    low = estimate_readout(frames, disp, np.ones(len(frames), bool), 12.5, analysis)
    assert analysis.min_readout_fps > 12.5 and low.source == "unknown" and low.evidence_frames == len(frames)
    assert "12.5 frames/s, under video.analysis.min_readout_fps" in low.why  # summary.json says why


def test_a_readout_the_evidence_does_not_bound_below_the_grid_top_is_unknown(analysis):
    # A mover filling a fixed camera's frame, read as the background, gave a global-shutter twin 1.16 frames with
    # an interval reaching the top of the searched readouts: the evidence does not bound it, so no readout is
    # claimed. The same noisy evidence bounds a readout of half a frame.
    noisy = []
    for r in (0.5, 1.1):
        frames, disp = shake_bands(r, analysis.bands)
        disp = disp + np.random.default_rng(1).normal(0, 0.5, disp.shape)  # band medians 10x noisier
        noisy.append(estimate_readout(frames, disp, np.ones(len(frames), bool), FPS, analysis))
    half, top = noisy
    assert half.source == "estimated" and abs(half.ms - 0.5 * 1000 / FPS) <= 0.1 * 0.5 * 1000 / FPS
    assert top.source == "unknown" and top.ms is None


def lagged_bands(bands: int, flat: int, lag: float) -> tuple[np.ndarray, np.ndarray]:
    """A global shutter's shake (every band at the frame's time), its top `flat` bands lagging by `lag` frames, as a
    codec's skipped flat blocks make them (experiments/wide_frames.py --codec mp4v)."""
    frames = np.arange(1, FRAMES, dtype=float)
    t = np.repeat(frames[:, None], bands, axis=1)
    t[:, :flat] -= lag
    x1, y1 = SHAKE(t)
    x0, y0 = SHAKE(t - 1.0)
    noise = np.random.default_rng(2).normal(0, FLOW_NOISE_PX, (len(frames), bands, 2))
    return frames, np.stack([x1 - x0, y1 - y0], axis=-1) + noise


def test_flat_bands_that_lag_do_not_make_a_global_shutter_a_rolling_one(analysis):
    # Sky over a shaking global-shutter camera, through MPEG-4: its top bands lagged the rest by 0.2-0.4 frames
    # and the fit read a readout of 16-23 ms. Weighed by their texture (a tenth of the others'), they do not.
    frames, disp = lagged_bands(analysis.bands, 3, 0.35)
    moving = np.ones(len(frames), bool)
    unweighted = estimate_readout(frames, disp, moving, FPS, analysis)
    assert unweighted.ms is not None and unweighted.ms > analysis.zero_readout_ms  # the failure, reproduced
    texture = np.full((len(frames), analysis.bands), 100.0)
    texture[:, :3] = 10.0
    got = estimate_readout(frames, disp, moving, FPS, analysis, band_weights(texture))
    assert got.ms is None or got.ms <= analysis.zero_readout_ms


def test_texture_weights_keep_a_rolling_shutters_readout(analysis):
    frames, disp = shake_bands(0.6, analysis.bands)
    texture = np.full((len(frames), analysis.bands), 100.0)
    texture[:, :3] = 10.0
    got = estimate_readout(frames, disp, np.ones(len(frames), bool), FPS, analysis, band_weights(texture))
    assert got.source == "estimated" and abs(got.ms - 0.6 * 1000.0 / FPS) <= 0.1 * 0.6 * 1000.0 / FPS


def pan_bands(r: float, bands: int, frames_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames, band displacements and camera motion of a pan that starts, holds and stops (6 px/frame, frames
    10-24) in a clip of frames_n, every frame with flow noise: a still camera's frames measured, not static, as
    real movers leave them."""
    move = pan(6.0, 10.0, 4.0, 6.0, 0.1)
    frames = np.arange(1, frames_n, dtype=float)
    t = frames[:, None] + r * band_centres(bands)[None, :]
    x1, y1 = move(t)
    x0, y0 = move(t - 1.0)
    disp = np.stack([x1 - x0, y1 - y0], axis=-1)
    moving = np.hypot(*disp.mean(axis=1).T) > 0.25
    return frames, disp + np.random.default_rng(3).normal(0, FLOW_NOISE_PX, disp.shape), moving


@pytest.mark.parametrize("still_frames", [26, 86])
def test_a_pan_of_a_camera_whose_still_frames_are_measured_gets_its_readout(analysis, still_frames):
    # Real footage panned (experiments/real_shake.py): a still camera's frames are measured (its movers change
    # pixels), their flow noise adds to every readout's residual alike. Counted against the camera-moving frames
    # only, that noise had widened the interval by the still frames' number: no pan got a readout. A frame's noise
    # is now estimated over the frames measured: more still frames do not hide the readout, and a global shutter
    # still reads none.
    r = 0.5
    frames, disp, moving = pan_bands(r, analysis.bands, 14 + still_frames)
    assert 12 <= moving.sum() <= 16
    got = estimate_readout(frames, disp, moving, FPS, analysis)
    truth_ms = r * 1000.0 / FPS
    assert got.source == "estimated" and abs(got.ms - truth_ms) <= 0.1 * truth_ms, got
    frames, disp, moving = pan_bands(0.0, analysis.bands, 14 + still_frames)
    twin = estimate_readout(frames, disp, moving, FPS, analysis)
    assert twin.ms is None or twin.ms <= analysis.zero_readout_ms, twin


def test_band_weights_follow_texture_and_unmeasured_frames_weigh_one():
    texture = np.array([[10.0, 100.0, 200.0, 400.0], [np.nan] * 4])
    w = band_weights(texture)
    assert w[0].tolist() == [0.025, 0.25, 0.5, 1.0] and w[1].tolist() == [1.0] * 4
