"""rsdetect.preprocess: one decoder and one geometry for every path. The same file scores the same through
training's path, the MLflow pyfunc and `scan`; frames are covered whole by tiles, so a distortion at the edge of
a wide frame is seen; tiles, decoding and the batched max over tiles behave as documented."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from rsdetect.errors import RsdetectError  # noqa: E402
from rsdetect.model import backbone as m  # noqa: E402
from rsdetect.model import head as hd  # noqa: E402
from rsdetect.preprocess import (  # noqa: E402
    TILE_STRIDE,
    box_text,
    decode,
    load_square,
    resize_short_side,
    score_frames,
    tile_starts,
    to_tiles,
)
from rsdetect.serve.loaders import load_model  # noqa: E402
from rsdetect.serve.scan import ScanOptions, run_scan  # noqa: E402
from rsdetect.serve.sources import parse_sources  # noqa: E402

from conftest import colour_model  # noqa: E402

S = 32
QUIET = dict(progress=False)


def write_rgb(path: Path, rgb: np.ndarray, quality: int = 90) -> Path:
    """Write an RGB image with OpenCV (JPEG at `quality`, or lossless PNG by extension)."""
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like RGB image: smooth colour fields plus noise and edges, so JPEG decoders have work to differ on."""
    rng = np.random.default_rng(seed)
    smooth = cv2.resize(rng.uniform(0, 255, (4, 5, 3)), (w, h), interpolation=cv2.INTER_CUBIC)
    img = smooth + rng.normal(0, 30, (h, w, 3))
    img[:, w // 3: w // 3 + 3] = 255
    return np.clip(img, 0, 255).astype(np.uint8)


def conv_model(seed: int = 0) -> keras.Model:
    """A small random conv net whose output follows fine pixel detail (a global colour mean would average a
    decoder's differences away)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((S, S, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(0, 3, seed))(x)
    return keras.Model(inp, out)


def save_pyfunc(keras_path: Path, out: Path, threshold: float, size: int):
    """Save the rsdetect pyfunc around a .keras file and load it back as MLflow serves it."""
    import mlflow

    from rsdetect.registry.pyfunc import RsDetector

    mlflow.pyfunc.save_model(str(out), python_model=RsDetector(), artifacts={"keras_model": str(keras_path)},
                             model_config={"threshold": threshold, "image_size": size}, pip_requirements=["rsdetect"])
    return mlflow.pyfunc.load_model(str(out))


def scanned(path: Path, model_spec: Path, out: Path) -> list[dict]:
    """frames.jsonl rows of `rsdetect scan` on one file."""
    result = run_scan(parse_sources([str(path)]), load_model(str(model_spec)), out, ScanOptions(**QUIET))
    assert result.exit_code == 0
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the same file, the same probability everywhere

def test_train_pyfunc_and_scan_give_the_same_probability(tmp_path):
    model = conv_model()
    keras_path = tmp_path / "conv.keras"
    model.save(keras_path)
    files = [write_rgb(tmp_path / "square.jpg", textured(S, S, 1)),
             write_rgb(tmp_path / "wide.jpg", textured(45, 80, 2))]

    train = hd.predict_paths(model, [str(f) for f in files], S, 4)  # train/evaluate's path
    pyfunc = save_pyfunc(keras_path, tmp_path / "pyfunc", 0.5, S)
    served = pyfunc.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    for i, f in enumerate(files):
        row, = scanned(f, keras_path, tmp_path / f"scan-{i}")
        assert abs(row["probability"] - train[i]) < 1e-5, f.name
        assert abs(served["probability"][i] - train[i]) < 1e-5, f.name
        assert row["tile"] == served["tile"][i]
    scan_pyfunc, = scanned(files[1], tmp_path / "pyfunc", tmp_path / "scan-pyfunc")  # scan loading the pyfunc folder
    assert abs(scan_pyfunc["probability"] - train[1]) < 1e-5

    # The 1e-5 agreement means something: TensorFlow's JPEG decoder (what training used) gives this file pixels a
    # few levels off OpenCV's, which moves this model's probability a hundred times further.
    import tensorflow as tf

    tf_pixels = tf.io.decode_jpeg(tf.io.read_file(str(files[0])), channels=3).numpy()
    assert 0 < np.abs(tf_pixels.astype(int) - decode(files[0])).max() <= 8
    p_tf = float(model(tf_pixels[None].astype(np.float32), training=False).numpy()[0, 0])
    assert abs(p_tf - train[0]) > 1e-3


def test_training_inputs_are_the_scanned_tile(tmp_path):
    """load_images and image_dataset (training's inputs) give exactly the pixels scan scores for a square image."""
    paths = [str(write_rgb(tmp_path / f"{i}.jpg", textured(*shape, i)))
             for i, shape in enumerate([(S, S), (2 * S, 2 * S)])]
    loaded = m.load_images(paths, S)
    batches = list(m.image_dataset(paths, np.array([0, 1]), S, 2))
    assert len(batches) == 1
    np.testing.assert_array_equal(batches[0][0].numpy(), loaded)
    np.testing.assert_array_equal(batches[0][1].numpy(), [0, 1])
    for p, x in zip(paths, loaded, strict=True):
        np.testing.assert_array_equal(x, to_tiles(decode(p), S)[0][0])
    np.testing.assert_array_equal(loaded[0], decode(paths[0]).astype(np.float32))  # S x S: not resampled
    wide = write_rgb(tmp_path / "wide.jpg", textured(S, 2 * S, 9))
    with pytest.raises(RsdetectError, match="wide.jpg: 64x32 is not square"):
        load_square(wide, S)


# ---------------------------------------------------------------- the whole frame is looked at

def test_distortion_in_the_left_fifth_of_a_wide_frame_is_flagged(tmp_path):
    size, threshold = 64, 0.5
    frame = np.full((360, 640, 3), 128, np.uint8)  # grey: R - B = 0 everywhere else
    frame[40:320, 8:120] = (255, 0, 0)  # the "distortion", inside the left fifth (x < 128)
    model = colour_model(size, gain=0.05, bias=-1.5)  # grey scores sigmoid(-1.5) ~ 0.18
    keras_path = tmp_path / "colour.keras"
    model.save(keras_path)

    # What the old centre crop saw: the short-side resize, then the middle square only.
    resized = resize_short_side(frame, size)
    x0 = (resized.shape[1] - size) // 2
    centre = float(model(resized[None, :, x0:x0 + size].astype(np.float32), training=False).numpy()[0, 0])
    assert centre < threshold

    _, boxes = to_tiles(frame, size)
    left = box_text(boxes[0])
    assert left.startswith("0,0,") and len(boxes) == 3
    png = write_rgb(tmp_path / "wide.png", frame)
    row, = scanned(png, keras_path, tmp_path / "scan")
    assert row["probability"] > threshold and row["flag"] and row["tile"] == left
    served = save_pyfunc(keras_path, tmp_path / "pyfunc", threshold, size).predict(frame)
    assert served["probability"][0] > threshold and bool(served["flag"][0]) and served["tile"][0] == left
    assert served["probability"][0] == pytest.approx(row["probability"], abs=1e-5)


# ---------------------------------------------------------------- tiles

@pytest.mark.parametrize("h,w", [(S, S), (S, 2 * S), (360, 640), (640, 360), (48, 64), (20, 25), (S + 1, 3 * S),
                                 (500, 499)])
def test_tiles_cover_the_whole_frame(h, w):
    frame = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), np.uint8)
    tiles, boxes = to_tiles(frame, S)
    assert tiles.shape == (len(boxes), S, S, 3) and tiles.dtype == np.float32
    covered = np.zeros((h, w), bool)
    for x, y, bw, bh in boxes:
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        covered[y:y + bh, x:x + bw] = True
    assert covered.all()  # every pixel (hence every column and row) is in some tile
    long, short = max(h, w), min(h, w)
    resized_long = round(long * S / short)
    # neighbours start at most TILE_STRIDE * S apart (in the resized frame), first flush left, last flush right
    starts = tile_starts(resized_long, S)
    assert starts[0] == 0 and starts[-1] == resized_long - S and len(starts) == len(boxes)
    assert all(0 < b - a <= TILE_STRIDE * S for a, b in zip(starts, starts[1:], strict=False))


def test_square_frame_is_one_unresampled_tile_and_two_to_one_is_three():
    frame = np.random.default_rng(0).integers(0, 256, (S, S, 3), np.uint8)
    tiles, boxes = to_tiles(frame, S)
    assert boxes == [(0, 0, S, S)]
    np.testing.assert_array_equal(tiles[0], frame.astype(np.float32))
    wide = np.random.default_rng(1).integers(0, 256, (S, 2 * S, 3), np.uint8)  # short side already S: no resize
    tiles, boxes = to_tiles(wide, S)
    assert boxes == [(0, 0, S, S), (S // 2, 0, S, S), (S, 0, S, S)]  # ceil(S / (S / 2)) + 1 = 3, half overlapping
    for tile, (x, _, _, _) in zip(tiles, boxes, strict=True):
        np.testing.assert_array_equal(tile, wide[:, x:x + S].astype(np.float32))
    tall_tiles, tall_boxes = to_tiles(wide.transpose(1, 0, 2), S)
    assert tall_boxes == [(0, 0, S, S), (0, S // 2, S, S), (0, S, S, S)]
    np.testing.assert_array_equal(tall_tiles[1], wide.transpose(1, 0, 2)[S // 2:S // 2 + S].astype(np.float32))
    big = np.kron(frame, np.ones((4, 4, 1), np.uint8))  # a 4x blow-up shrinks back by two exact halvings
    np.testing.assert_array_equal(to_tiles(big, S)[0][0], frame.astype(np.float32))


# ---------------------------------------------------------------- scoring many frames

def test_score_frames_is_the_max_over_each_frames_tiles_whatever_the_batch():
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, shape + (3,), np.uint8)
              for shape in [(S, S), (S, 3 * S), (50, 40), (S, S), (40, 90)]]
    calls = []

    def score_fn(x):  # a score per tile: its mean red level
        calls.append(len(x))
        return x[..., 0].mean(axis=(1, 2)) / 255

    expected = [to_tiles(f, S) for f in frames]
    want_p = [t[..., 0].mean(axis=(1, 2)).max() / 255 for t, _ in expected]
    want_box = [b[int(np.argmax(t[..., 0].mean(axis=(1, 2))))] for t, b in expected]
    n_tiles = sum(len(b) for _, b in expected)
    for batch in (1, 3, 4, 100):
        calls.clear()
        probs, boxes = score_frames(score_fn, iter(frames), S, batch)
        np.testing.assert_allclose(probs, want_p, rtol=1e-12)
        assert boxes == want_box
        assert sum(calls) == n_tiles and all(c == batch for c in calls[:-1]) and calls[-1] <= batch
    probs, boxes = score_frames(score_fn, [], S, 4)
    assert probs.shape == (0,) and boxes == []
    with pytest.raises(RsdetectError, match="returned 1 scores for a batch of 4"):
        score_frames(lambda x: np.zeros(1), frames, S, 4)
    nan_on_second = score_frames(lambda x: np.where(np.arange(len(x)) == 1, np.nan, 0.5), frames[1:2], S, 8)[0]
    assert np.isnan(nan_on_second[0])  # a NaN tile is not hidden behind the other tiles' max


# ---------------------------------------------------------------- decoding

def test_decode_formats_and_channel_order(tmp_path):
    rgb = np.zeros((16, 24, 3), np.uint8)  # 16 px: the smallest side decode takes (rsdetect.limits)
    rgb[:, :12] = (250, 10, 10)
    rgb[:, 12:] = (10, 20, 240)
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    np.testing.assert_array_equal(decode(png), rgb)  # RGB, not OpenCV's BGR
    path = tmp_path / "f.png"
    path.write_bytes(png)
    np.testing.assert_array_equal(decode(path), rgb)
    np.testing.assert_array_equal(decode(str(path)), rgb)
    gray = rgb[..., 1].copy()
    g = decode(cv2.imencode(".png", gray)[1].tobytes())
    assert g.shape == (16, 24, 3) and all(np.array_equal(g[..., c], gray) for c in range(3))
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full((16, 24), 128, np.uint8)])
    np.testing.assert_array_equal(decode(cv2.imencode(".png", bgra)[1].tobytes()), rgb)  # alpha dropped
    deep = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257  # 16-bit: 255 -> 65535
    np.testing.assert_array_equal(decode(cv2.imencode(".png", deep)[1].tobytes()), rgb)


def test_decode_garbage_is_one_line_naming_the_input(tmp_path):
    with pytest.raises(RsdetectError, match=r"^clip-7\.jpg: cannot decode image") as exc:
        decode(b"\xff\xd8 not really a jpeg", "clip-7.jpg")
    assert "\n" not in str(exc.value)
    with pytest.raises(RsdetectError, match=r"^input image: cannot decode"):
        decode(b"")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(RsdetectError, match=rf"^{bad}: cannot decode"):
        decode(bad)
    with pytest.raises(RsdetectError, match=rf"^{tmp_path / 'missing.jpg'}: cannot read"):
        decode(tmp_path / "missing.jpg")
