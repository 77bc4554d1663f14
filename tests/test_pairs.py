"""rsdetect.synth.pairs: fresh training pairs are a pure function of (seed, epoch, step), twins share content and
augmentation, the curriculum eases in, and only the asked split's photos are drawn from."""
import numpy as np
import pytest

from rsdetect.datasets.instances import load_instances
from rsdetect.errors import RsdetectError
from rsdetect.synth.manifest import split_images
from rsdetect.synth.pairs import PairStream, augment_pair, fixed_pairs, load_photos

from conftest import params_group, with_params

P = params_group("synthesize", size=64, min_person_area=60, pairs_per_photo=1)
A = params_group("augment")


@pytest.fixture(scope="module")
def photos(sample_dir):
    return load_photos(sample_dir / "instances.json", 5, P, "train")[0]


def test_only_the_asked_split_is_loaded(sample_dir, photos):
    coco = load_instances(sample_dir / "instances.json")
    split = split_images(coco["images"], 5, P.val_fraction, P.test_fraction)
    assert {pid for pid, _, _ in photos} == {i for i, s in split.items() if s == "train"}
    val, _ = load_photos(sample_dir / "instances.json", 5, P, "val")
    assert not {pid for pid, _, _ in val} & {pid for pid, _, _ in photos}


def test_batches_repeat_exactly_and_never_repeat_across_steps(photos):
    a = PairStream(photos, 1, P, A, 8)
    b = PairStream(photos, 1, P, A, 8)
    x1, y1 = a.batch(2, 3)
    x2, y2 = b.batch(2, 3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, [1, 0] * 4)
    assert x1.shape == (8, 64, 64, 3) and x1.dtype == np.float32 and y1.dtype == np.float32
    assert not np.array_equal(a.batch(2, 4)[0], x1) and not np.array_equal(a.batch(3, 3)[0], x1)
    assert not np.array_equal(PairStream(photos, 2, P, A, 8).batch(2, 3)[0], x1)
    streamed = list(a.epoch(2, 5))  # the prefetching iterator gives the same batches in order
    assert len(streamed) == 5 and np.array_equal(streamed[3][0], x1)


def test_twins_share_content_other_pairs_do_not(photos):
    x, _ = PairStream(photos, 1, P, A, 16).batch(0, 0)
    twin = np.abs(x[0::2] - x[1::2]).mean(axis=(1, 2, 3))
    other = np.abs(x[0::2] - np.roll(x[1::2], 1, axis=0)).mean(axis=(1, 2, 3))
    assert np.median(twin) < 0.5 * np.median(other)


def test_augmentation_is_the_same_on_both_twins():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    for seed in range(5):
        rs, gs = augment_pair(img, img.copy(), np.random.default_rng(seed), A)
        np.testing.assert_array_equal(rs, gs)  # identical inputs stay identical: flip, gain, blur, noise, JPEG shared
    changed = augment_pair(img, img, np.random.default_rng(1), A)[0]
    assert np.abs(changed.astype(int) - img).mean() > 1  # and it does change the image


def test_curriculum_scales_motion_down_to_one(photos):
    s = PairStream(photos, 1, P, A, 4, curriculum_epochs=4, curriculum_scale=3.0)
    assert [s.scale(e) for e in (0, 2, 4, 9)] == [3.0, 2.0, 1.0, 1.0]


def test_fixed_pairs_are_fixed_and_unaugmented(photos):
    x1, y1 = fixed_pairs(photos, 1, P, 6, tag=999)
    x2, _ = fixed_pairs(photos, 1, P, 6, tag=999)
    np.testing.assert_array_equal(x1, x2)
    assert len(x1) == 12 and y1.sum() == 6


def test_odd_batch_and_no_photos_are_one_line_errors(sample_dir, photos, tmp_path):
    with pytest.raises(RsdetectError, match="must be even"):
        PairStream(photos, 1, P, A, 7)
    (tmp_path / "instances.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(RsdetectError, match="no readable train photo"):
        load_photos(tmp_path / "instances.json", 1, P)


def test_a_photo_without_people_still_gives_camera_motion(photos):
    bare = [(pid, image, []) for pid, image, _ in photos[:3]]
    x, y = PairStream(bare, 1, P, A, 6).batch(0, 0)
    assert np.isfinite(x).all() and y.tolist() == [1, 0] * 3
    with pytest.raises(RsdetectError, match="no training photo gave a pair"):
        PairStream(bare, 1, with_params(P, kinds={"object": 1.0}), A, 2).batch(0, 0)
