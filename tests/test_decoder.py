"""rsdetect.serve.decoder: frames decoded in a process per camera; a decoder that dies costs its camera only."""
from __future__ import annotations

import glob

import cv2
import numpy as np
import pytest
from crashing_source import AbortingSource

from rsdetect.serve.decoder import ReadRequest, decoded_frames
from rsdetect.serve.sources import SourceError, resolve_source


def write_video(path, n=12, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    for i in range(n):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        cv2.rectangle(frame, (2 * i, 10), (2 * i + 10, 30), (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def leaked_rings() -> list[str]:
    return glob.glob("/dev/shm/psm_*")


def test_isolated_frames_equal_in_process_frames(tmp_path):
    source = resolve_source("cam", str(write_video(tmp_path / "a.avi")))
    request = ReadRequest(every=2, max_frames=5)
    here = list(decoded_frames(source, pytest.fail, request, isolate=False))
    there = list(decoded_frames(source, pytest.fail, request, isolate=True))
    assert [(i, ts, e) for i, ts, _, e in there] == [(i, ts, e) for i, ts, _, e in here] == \
        [(i, i / 25, None) for i in (0, 2, 4, 6, 8)]
    for (_, _, a, _), (_, _, b, _) in zip(here, there, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_decoder_that_aborts_is_one_line_after_its_good_frames(tmp_path):
    before = set(leaked_rings())
    got = []
    with pytest.raises(SourceError) as err:
        for item in decoded_frames(AbortingSource("bad", "bad.avi", good=3), pytest.fail, isolate=True):
            got.append(item[0])
    assert got == [0, 1, 2]
    assert str(err.value) == ("bad.avi: the decoder process was killed by SIGABRT (a crash in native decoding code); "
                              "this camera stops")
    assert set(leaked_rings()) <= before  # the dead decoder's shared memory is unlinked by the reader


def test_frame_errors_and_source_failures_cross_the_process(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((20, 30, 3), np.uint8))
    (folder / "b.png").write_bytes(b"not an image")
    errors = []
    frames = list(decoded_frames(resolve_source("cam", str(folder)), errors.append, isolate=True))
    assert [i for i, *_ in frames] == [0] and len(errors) == 1 and "b.png" in errors[0]
    with pytest.raises(SourceError, match="no such file, folder or matching glob"):
        list(decoded_frames(resolve_source("cam", str(tmp_path / "nope.avi")), pytest.fail, isolate=True))


def test_closing_early_stops_the_decoder_and_frees_its_ring(tmp_path):
    before = set(leaked_rings())
    source = resolve_source("cam", str(write_video(tmp_path / "a.avi", n=40)))
    frames = decoded_frames(source, pytest.fail, isolate=True)
    assert next(frames)[0] == 0
    frames.close()
    assert set(leaked_rings()) <= before


def test_the_decode_limit_reaches_the_decoder_process(tmp_path, monkeypatch):
    """images.max_pixels, set in this process by load_params, is the limit the decoder process reads with too."""
    from rsdetect import limits

    source = resolve_source("cam", str(write_video(tmp_path / "a.avi")))  # 64x48: 3072 px
    monkeypatch.setattr(limits, "_max_pixels", 3000)
    with pytest.raises(SourceError, match=r"a\.avi: frames too large: 64x48 px"):
        list(decoded_frames(source, pytest.fail, ReadRequest(), isolate=True))
    monkeypatch.setattr(limits, "_max_pixels", 4000)
    assert len(list(decoded_frames(source, pytest.fail, ReadRequest(), isolate=True))) == 12


def test_video_frames_with_evidence_cross_without_pixels_unless_among_the_worst(tmp_path):
    """With analysis, a video frame's evidence decides its score: only frames that can be among the scorer's worst
    (highest probability, ties to the earlier frame) bring their pixels across; the worst all have theirs, in RGB as
    any reader gives them (the decoder process keeps a video's frames BGR until one is kept)."""
    import heapq

    from rsdetect.serve.sources import video_frames
    from rsdetect.synth.clips import crop_box, render_camera, vibration

    from conftest import params_group

    rng = np.random.default_rng(5)
    grey = cv2.GaussianBlur(rng.uniform(0, 255, (240, 320)), (0, 0), 2)
    image = np.stack([0.2 * grey, 0.6 * grey, grey], axis=-1).astype(np.uint8)  # BGR: blue, unlike its RGB
    frames, _ = render_camera(image, vibration(3.0, 7.0, 25.0, 0.3, 0.2), 30, 0.6, "rolling", crop_box(image, 0.7))
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp_path / "shake.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    source = resolve_source("shake", str(tmp_path / "shake.avi"))
    analysis = params_group("video.analysis")
    for worst, isolate in ((3, True), (3, False), (0, True)):
        got = list(decoded_frames(source, pytest.fail, ReadRequest(analysis=analysis, worst=worst), isolate=isolate))
        # every frame, in order: those with pixels and those whose evidence crossed alone (in batches) interleave
        assert [i for i, *_ in got] == list(range(30)) and all(e is not None for *_, e in got)
        with_pixels = {i for i, _, rgb, _ in got if rgb is not None}
        top = {i for _, i in heapq.nlargest(worst, ((e["probability"], -i) for i, *_, e in got))}
        assert {-i for i in top} <= with_pixels, (worst, isolate)
        assert len(with_pixels) <= 15 if worst else not with_pixels
        decoded = {i: rgb for i, _, rgb in video_frames(str(tmp_path / "shake.avi"))}
        for i, _, rgb, _ in got:
            if rgb is not None:
                np.testing.assert_array_equal(rgb, decoded[i])


def test_a_decoder_closed_early_stops_on_its_own_and_removes_its_ring(tmp_path, monkeypatch):
    """Closing the frames early (a cap, a stop) asks the decoder to stop: it unlinks its ring itself and exits 0.
    Killed instead, it could die between unlinking the ring and telling Python's resource tracker, which then
    warned of a leaked shared_memory object at the scan's exit."""
    from rsdetect.serve import decoder

    real, started = decoder._ctx(), []

    class Recording:
        def Pipe(self):  # noqa: N802  (multiprocessing's names)
            return real.Pipe()

        def Process(self, *args, **kwargs):  # noqa: N802
            started.append(real.Process(*args, **kwargs))
            return started[-1]

    monkeypatch.setattr(decoder, "_ctx", lambda: Recording())
    before = set(leaked_rings())
    frames = decoded_frames(resolve_source("cam", str(write_video(tmp_path / "a.avi", n=40))), pytest.fail,
                            isolate=True)
    assert [next(frames)[0] for _ in range(3)] == [0, 1, 2]
    frames.close()
    assert started and started[0].exitcode == 0  # not -SIGKILL
    assert set(leaked_rings()) <= before
