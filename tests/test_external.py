"""rsdetect.synth.rengarajan: the independent-recipe test set (Rengarajan et al. 2017): the warp does what it says,
shear_px is the displacement really applied, only our test photos are used, reruns are byte-identical,
bad photos are counted skips, and the shear distribution is the published one."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace  # CameraMotion is a dataclass; params groups use with_params

import cv2
import numpy as np
import pytest

from rsdetect.config import ConfigError, load_params, parse_params
from rsdetect.datasets.instances import load_instances
from rsdetect.shutter import shear_extent
from rsdetect.synth.manifest import read_manifest, split_images
from rsdetect.synth.rengarajan import (
    EXTERNAL_FIELDS,
    CameraMotion,
    centre_window,
    draw_motion,
    make_external,
    render_pair,
    rengarajan_pair,
    row_displacements,
)

from conftest import ROOT, params_group, params_raw, tree_digest, with_params

P = params_group("external", pairs_per_photo=2)
FRACTIONS = (0.15, 0.15)
SEED = 5


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour texture: structure at every position, so any warp changes it."""
    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32) * 255
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


def vertical_bars(side: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A window whose every row is the same random (smoothed) profile: vertical bars; and that profile."""
    profile = cv2.GaussianBlur(np.random.default_rng(seed).random((1, side)).astype(np.float32) * 255, (0, 0), 1.5)[0]
    profile = (profile - profile.min()) / np.ptp(profile) * 255
    return np.repeat(np.repeat(profile[None, :, None], side, 0), 3, 2).astype(np.float32), profile


def row_shift(row: np.ndarray, profile: np.ndarray, cols: np.ndarray, margin: int, max_shift: int = 90) -> float:
    """Horizontal shift s (px) with row[x] ~ profile[x + margin - s] over `cols`: SSD minimum, parabola-refined."""
    shifts = np.arange(-max_shift, max_shift + 1)
    ssd = np.array([((row[cols] - profile[cols + margin - s]) ** 2).sum() for s in shifts])
    i = int(np.argmin(ssd))
    a, b, c = ssd[i - 1], ssd[i], ssd[i + 1]
    return float(shifts[i] + 0.5 * (a - c) / (a - 2 * b + c))


def test_rs_differs_from_twin_and_twin_is_rigid():
    photo = texture(480, 640)
    rs, gs, shear = rengarajan_pair(photo, np.random.default_rng(3), params_group("external"))
    assert rs.shape == gs.shape == (256, 256, 3) and rs.dtype == gs.dtype == np.uint8
    assert shear > 0 and np.abs(rs.astype(int) - gs.astype(int)).mean() > 5
    # the twin is one rigid pose (the motion at t*) applied to the whole window: equal to cv2.warpAffine of it
    motion = CameraMotion(a1=30.0, a2=-12.0, b1=2.0, b2=-1.0, t_star=0.6)
    window = centre_window(photo, 356)
    rs, gs, shear = render_pair(window, motion, 256)
    tx, theta = (float(v[0]) for v in motion.pose(np.array([0.6])))
    c = 177.5
    forward = cv2.getRotationMatrix2D((c, c), -np.rad2deg(theta), 1.0)  # OpenCV's angle is counter-clockwise
    forward[0, 2] += tx
    rigid = cv2.warpAffine(window, forward, (356, 356), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    assert np.abs(gs.astype(int) - rigid[50:306, 50:306].astype(int)).max() <= 2
    assert np.abs(rs.astype(int) - rigid[50:306, 50:306].astype(int)).mean() > 5  # the RS image is not that pose
    # t* = 0 is the paper's ground truth: the first-row pose is the identity, the twin is the plain crop
    _, first_row, _ = render_pair(window, replace(motion, t_star=0.0), 256)
    assert np.array_equal(first_row, window[50:306, 50:306])


@pytest.mark.parametrize("motion", [
    CameraMotion(a1=30.0, a2=-10.0, b1=0.0, b2=0.0, t_star=0.0),   # monotonic: shear = tx(1) = 20
    CameraMotion(a1=40.0, a2=-40.0, b1=0.0, b2=0.0, t_star=0.0),   # a bulge: top and bottom agree, middle at 10
    CameraMotion(a1=-57.0, a2=-14.0, b1=0.0, b2=0.0, t_star=0.0),  # the range's extreme: 71 px, past the margin
])
def test_shear_px_is_the_horizontal_offset_actually_applied_to_vertical_bars(motion):
    window, profile = vertical_bars(356)
    rs, gs, shear = render_pair(window, motion, 256)
    cols = np.arange(96, 160)  # around the centre: sample positions stay inside the window for any shift tried
    measured = np.array([row_shift(rs[y, :, 0], profile, cols, 50) for y in range(0, 256, 5)])
    tx, _ = motion.pose(np.arange(0, 256, 5) / 255)
    np.testing.assert_allclose(measured, tx, atol=0.3)  # each row moved by tx(y) ...
    assert np.ptp(measured) == pytest.approx(shear, abs=0.5)  # ... and shear_px is their spread
    twin = np.array([row_shift(gs[y, :, 0], profile, cols, 50) for y in range(0, 256, 5)])
    assert np.ptp(twin) < 0.3  # the twin's rows all sit at the same offset


def test_shear_px_includes_the_rotation_seen_at_the_centre_column():
    motion = CameraMotion(a1=0.0, a2=0.0, b1=6.0, b2=0.0, t_star=0.0)  # rotation only, growing down the frame
    window, profile = vertical_bars(356)
    rs, _, shear = render_pair(window, motion, 256)
    cols = np.arange(118, 138)  # the centre columns: rotation moves them by -v sin(theta) horizontally
    measured = np.array([row_shift(rs[y, :, 0], profile, cols, 50) for y in range(0, 256, 15)])
    dx, dy = row_displacements(motion, 356, 256)
    np.testing.assert_allclose(measured, dx[::15], atol=0.6)
    assert shear == pytest.approx(shear_extent(dx, dy)) and shear > 10  # 127.5 * sin(6 deg) = 13.3 px at the bottom
    assert np.ptp(measured) == pytest.approx(shear, rel=0.1)


def test_shear_distribution_reproduces_the_published_one():
    """Measured on Rengarajan et al.'s data: median ~27 px, 10th-90th percentile 6-54 px (our params.yaml ranges)."""
    p = load_params(ROOT / "params.yaml").external
    rng = np.random.default_rng(2017)
    shear = np.array([shear_extent(*row_displacements(draw_motion(rng, p), p.window, p.size)) for _ in range(4000)])
    p10, p50, p90 = np.percentile(shear, [10, 50, 90])
    print(f"external shear over 4000 draws: p10 {p10:.2f} px, median {p50:.2f} px, p90 {p90:.2f} px, "
          f"{(shear < 3).mean():.1%} under 3 px")
    assert 20 <= p50 <= 35
    assert 4.5 <= p10 <= 7.5 and 50 <= p90 <= 58


def test_only_test_split_photos_are_used_and_files_match_the_manifest(sample_dir, tmp_path):
    report = make_external(sample_dir / "instances.json", tmp_path / "ext", SEED, FRACTIONS, P)
    split = split_images(load_instances(sample_dir / "instances.json")["images"], SEED, *FRACTIONS)
    test_ids = {i for i, s in split.items() if s == "test"}
    rows = read_manifest(tmp_path / "ext" / "manifest.csv")
    with open(tmp_path / "ext" / "manifest.csv", newline="") as f:
        assert next(csv.reader(f)) == EXTERNAL_FIELDS
    assert {r["image_id"] for r in rows} == test_ids  # every test photo, and nothing from train or val
    assert report["photos"] == len(test_ids) and report["photos_not_test"] == len(split) - len(test_ids)
    assert report["pairs"] == len(test_ids) * P.pairs_per_photo and len(rows) == 2 * report["pairs"]
    assert {r["split"] for r in rows} == {"external"} and {r["kind"] for r in rows} == {"rengarajan"}
    assert sorted(r["label"] for r in rows) == [0] * report["pairs"] + [1] * report["pairs"]
    for r in rows:
        img = cv2.imread(str(tmp_path / "ext" / r["path"]))
        assert img.shape == (256, 256, 3)
    on_disk = {str(p.relative_to(tmp_path / "ext")) for p in (tmp_path / "ext" / "images").iterdir()}
    assert on_disk == {r["path"] for r in rows}
    assert json.loads((tmp_path / "ext" / "report.json").read_text())["pairs"] == report["pairs"]
    assert not list(tmp_path.glob(".ext.*"))  # no staging folder left behind


def test_same_seed_gives_byte_identical_outputs(sample_dir, tmp_path):
    make_external(sample_dir / "instances.json", tmp_path / "a", SEED, FRACTIONS, P)
    make_external(sample_dir / "instances.json", tmp_path / "b", SEED, FRACTIONS, P)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    make_external(sample_dir / "instances.json", tmp_path / "c", SEED + 1, FRACTIONS, P)
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    # a rerun into the same folder replaces it whole
    make_external(sample_dir / "instances.json", tmp_path / "a", SEED, FRACTIONS, with_params(P, pairs_per_photo=1))
    half = len(read_manifest(tmp_path / "b" / "manifest.csv")) // 2
    assert len(read_manifest(tmp_path / "a" / "manifest.csv")) == half
    assert len(list((tmp_path / "a" / "images").iterdir())) == len(read_manifest(tmp_path / "a" / "manifest.csv"))


def test_corrupt_and_missing_photos_are_counted_skips_with_reasons(sample_dir, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(sample_dir, root)
    coco = load_instances(root / "instances.json")
    split = split_images(coco["images"], SEED, *FRACTIONS)
    test = sorted((im for im in coco["images"] if split[im["id"]] == "test"), key=lambda im: im["id"])
    assert len(test) >= 3
    corrupt, missing = root / "images" / test[0]["file_name"], root / "images" / test[1]["file_name"]
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing.unlink()
    report = make_external(root / "instances.json", tmp_path / "ext", SEED, FRACTIONS, P)
    assert report["skipped"] == 2 and report["photos"] == len(test)
    reasons = {s["image_id"]: s["reason"] for s in report["skipped_items"]}
    assert "cannot be decoded" in reasons[test[0]["id"]] and "cannot be read" in reasons[test[1]["id"]]
    assert sum(report["skipped_by_reason"].values()) == 2
    ids = {r["image_id"] for r in read_manifest(tmp_path / "ext" / "manifest.csv")}
    assert ids == {im["id"] for im in test[2:]}


@pytest.mark.parametrize("key, value, message", [
    ("pairs_per_photo", 0, "external.pairs_per_photo: Input should be greater than 0"),
    ("jpeg_quality", 101, "external.jpeg_quality"),
    ("window", 200, "external.window: must be >= external.size"),
    ("window", 357, "external.window: window - size must be even"),
    ("rotation_linear", [-50, 50], "external.rotation_linear"),
    ("translation_quadratic", [20, -20], "external.translation_quadratic: range"),
    ("twin_time", [0.0, 1.5], "external.twin_time"),
    ("unknown", 1, "external.unknown: Extra inputs are not permitted"),
])
def test_bad_external_params_fail_with_one_line_naming_the_param(key, value, message):
    with pytest.raises(ConfigError) as exc:
        parse_params(params_raw({"external": {key: value}}))
    assert message in str(exc.value) and "\n" not in str(exc.value)
