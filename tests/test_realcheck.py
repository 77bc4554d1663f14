"""rsdetect.evaluation.photos: held-out selection, twin pairs and whole-photo false alarms, on a COCO folder the test
makes."""
import json
import shutil

import numpy as np
import pytest

from rsdetect.errors import RsdetectError
from rsdetect.evaluation.photos import check_photos, held_out_photos

from conftest import params_group

P = params_group("synthesize", size=64, min_person_area=60, pairs_per_photo=1)


@pytest.fixture
def folder(sample_dir, tmp_path):
    """The generated sample as a COCO folder (images/ + instances_x.json), one photo corrupted."""
    d = tmp_path / "photos"
    shutil.copytree(sample_dir / "images", d / "images")
    coco = json.loads((sample_dir / "instances.json").read_text())
    (d / "instances_x.json").write_text(json.dumps(coco))
    (d / "images" / coco["images"][0]["file_name"]).write_bytes(b"broken")
    return d, coco


def test_excluded_photos_are_left_out(folder, tmp_path):
    d, coco = folder
    (tmp_path / "seen.json").write_text(json.dumps({"images": coco["images"][:5]}))
    kept = held_out_photos([d], [tmp_path / "seen.json"])
    assert len(kept) == len(coco["images"]) - 5
    assert not {im["id"] for _, im, _ in kept} & {im["id"] for im in coco["images"][:5]}


def test_scores_pairs_and_whole_photos(folder):
    d, coco = folder
    photos = held_out_photos([d], [])
    # A scorer that says "distorted" where a tile's left half differs from its mirror: enough to be non-constant.
    def score(x):
        return 1 / (1 + np.exp(-(np.abs(x - x[:, :, ::-1]).mean(axis=(1, 2, 3)) - 40) / 5))
    r = check_photos(score, 64, 0.5, photos, 1, P, pairs_per_photo=2)
    assert r["skipped"] == 1 and r["photos"] == len(coco["images"]) - 1  # the corrupt one, counted
    assert r["pairs"] > 0 and r["pairs_metrics"]["n"] == 2 * r["pairs"]
    assert 0 <= r["ordinary_photos_flagged"] <= 1 and r["ordinary_photos"] == r["photos"]
    always = check_photos(lambda x: np.ones(len(x)), 64, 0.5, photos, 1, P, 1)
    never = check_photos(lambda x: np.zeros(len(x)), 64, 0.5, photos, 1, P, 1)
    assert always["ordinary_photos_flagged"] == 1.0 and always["twins_flagged"] == 1.0
    assert never["ordinary_photos_flagged"] == 0.0 and never["pairs_metrics"]["recall"] == 0.0


def test_a_folder_without_one_instances_file_is_one_line_error(tmp_path):
    with pytest.raises(RsdetectError, match="expected one instances"):
        held_out_photos([tmp_path], [])
