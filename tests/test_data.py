import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict

from rsdetect.errors import RsdetectError
from rsdetect.synth.manifest import read_manifest, split_images
from rsdetect.synth.twins import synthesize

from conftest import params_group, tree_digest, with_params

P = params_group("synthesize", size=96, min_person_area=150, workers=2, pairs_per_photo=1)


def test_pairs_are_balanced_split_by_photo_and_deterministic(sample_dir, tmp_path):
    r1 = synthesize(sample_dir / "instances.json", tmp_path / "a", 5, P)
    synthesize(sample_dir / "instances.json", tmp_path / "b", 5, with_params(P, workers=1))
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")  # byte-identical, whatever the worker count
    rows = read_manifest(tmp_path / "a" / "manifest.csv")
    assert r1["pairs"] * 2 == len(rows) > 0
    splits_of_photo = {}
    for r in rows:
        splits_of_photo.setdefault(r["image_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of_photo.values())  # no photo in two splits
    for counts in r1["samples"].values():
        assert counts["rs"] == counts["gs"]
    rs = [r for r in rows if r["label"] == 1]
    assert all(r["max_disp_px"] >= P.min_visible_px for r in rs)
    assert all(float(r["max_disp_px"]) > 0 for r in rs)
    for r in rows:
        img = cv2.imread(str(tmp_path / "a" / r["path"]))
        assert img.shape == (96, 96, 3)


def test_val2017_photos_go_to_test_and_splits_are_disjoint():
    images = [{"id": i, "coco_split": "val2017" if i > 80 else "train2017"} for i in range(1, 101)]
    split = split_images(images, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert {i for i, s in split.items() if s == "test"} == set(range(81, 101))
    assert sum(s == "val" for s in split.values()) == 16 and len(split) == 100


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_bad_inputs_are_counted_skips_with_reasons(tmp_path):
    rng = np.random.default_rng(0)
    photo = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", photo)[1].tobytes()
    person = [[40, 20, 90, 20, 95, 110, 60, 115, 35, 110]]
    images, anns = [], []

    def add(name, data, segs, iscrowd=0, area=4000.0):
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": 160, "height": 120})
        if data is not None:
            _write(tmp_path / "images" / name, data)
        for seg in segs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": iscrowd,
                         "segmentation": seg, "area": area, "bbox": [0, 0, 1, 1]})

    add("good.jpg", jpeg, [person])
    add("gray.jpg", cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))[1].tobytes(), [person])
    add("deep.png", cv2.imencode(".png", photo.astype(np.uint16) * 257)[1].tobytes(), [person])
    add("corrupt.jpg", b"not an image at all", [person])
    add("truncated.jpg", jpeg[: len(jpeg) // 2], [person])
    add("missing.jpg", None, [person])
    add("twopoints.jpg", jpeg, [[[10, 10, 50, 50]]])
    add("zeroarea.jpg", jpeg, [[[10, 10, 10, 10, 10, 10]]])
    add("offimage.jpg", jpeg, [[[500, 500, 600, 500, 600, 600]]])
    add("crowdonly.jpg", jpeg, [{"counts": [0, 19200], "size": [120, 160]}], iscrowd=1)
    add("border.jpg", jpeg, [[[0, 10, 50, 10, 50, 119, 0, 119]]])
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                         "categories": [{"id": 1, "name": "person"}]}))
    out = tmp_path / "synth"
    # Person motion only: a photo without a usable person cannot give a pair.
    report = synthesize(tmp_path / "instances.json", out, 1, with_params(P, min_person_area=50, kinds={"object": 1.0}))
    reasons = {s["file"].split("/")[-1]: s["reason"] for s in report["skipped_items"]}
    assert set(reasons) == {"corrupt.jpg", "truncated.jpg", "missing.jpg", "twopoints.jpg", "zeroarea.jpg",
                            "offimage.jpg", "crowdonly.jpg"}
    assert "decoded" in reasons["corrupt.jpg"] and "truncated" in reasons["truncated.jpg"]
    assert "cannot be read" in reasons["missing.jpg"] and "no usable person" in reasons["crowdonly.jpg"]
    assert report["pairs"] == 4 and report["skipped"] == 7  # good, gray, 16-bit and border photos give pairs
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))  # nothing half-written
    # With camera motion in the mix, the photos without a usable person give pan / vibration pairs instead.
    report = synthesize(tmp_path / "instances.json", tmp_path / "mixed", 1, with_params(P, min_person_area=50))
    assert report["skipped"] == 3 and report["pairs"] == 8
    rows = read_manifest(tmp_path / "mixed" / "manifest.csv")
    personless = {r["kind"] for r in rows if r["label"] == 1 and r["ann_id"] == "0"}
    assert personless and personless <= {"pan", "vibration"}


def test_unreadable_instances_is_one_line_error(tmp_path):
    (tmp_path / "instances.json").write_text("{not json")
    with pytest.raises(RsdetectError, match="instances.json: cannot read COCO instances"):
        synthesize(tmp_path / "instances.json", tmp_path / "out", 1, P)


def shortcut_features(path: Path) -> np.ndarray:
    """Features blind to geometry: colour histograms, exact zeros/saturation, file size, global moments."""
    img = cv2.imread(str(path))
    hist = np.concatenate([np.histogram(img[..., c], bins=8, range=(0, 256))[0] for c in range(3)]) / img[..., 0].size
    return np.concatenate([hist, [(img == 0).mean(), (img == 255).mean(), path.stat().st_size / 1e4,
                                  img.mean() / 255, img.std() / 255]])


@pytest.mark.slow
def test_artefact_features_cannot_tell_the_classes_apart(tmp_path):
    from rsdetect.datasets.drawn import make_sample_dataset

    make_sample_dataset(tmp_path / "raw", seed=11, n_images=160, width=240, height=180)
    synthesize(tmp_path / "raw" / "instances.json", tmp_path / "synth", 11, with_params(P, size=128))
    rows = read_manifest(tmp_path / "synth" / "manifest.csv")
    x = np.stack([shortcut_features(tmp_path / "synth" / r["path"]) for r in rows])
    y = np.array([r["label"] for r in rows])
    groups = np.array([r["pair_id"] for r in rows])
    prob = cross_val_predict(LogisticRegression(max_iter=2000), x, y, groups=groups, cv=GroupKFold(5),
                             method="predict_proba")[:, 1]
    auc = roc_auc_score(y, prob)
    assert 0.38 < auc < 0.62, f"shortcut features separate the classes (AUC {auc:.3f})"


def test_several_pairs_per_photo_stay_in_its_split_and_repeat_exactly(sample_dir, tmp_path):
    one = synthesize(sample_dir / "instances.json", tmp_path / "one", 5, with_params(P, workers=1))
    three = synthesize(sample_dir / "instances.json", tmp_path / "three", 5,
                       with_params(P, workers=1, pairs_per_photo=3))
    assert three["pairs"] == 3 * one["pairs"]
    rows = read_manifest(tmp_path / "three" / "manifest.csv")
    assert len({r["path"] for r in rows}) == len(rows)
    splits_of_photo = {}
    for r in rows:
        splits_of_photo.setdefault(r["image_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of_photo.values())
    motions = {}
    for r in rows:
        if r["label"] == 1:
            motions.setdefault(r["image_id"], set()).add((r["kind"], r["readout"], r["speed"], r["amplitude"]))
    assert all(len(m) == 3 for m in motions.values())  # each pair draws its own motion
    for r in read_manifest(tmp_path / "one" / "manifest.csv"):  # pair 0 is the pair of a one-pair run, byte for byte
        assert (tmp_path / "three" / r["path"]).read_bytes() == (tmp_path / "one" / r["path"]).read_bytes()
    again = synthesize(sample_dir / "instances.json", tmp_path / "again", 5,
                       with_params(P, workers=2, pairs_per_photo=3))
    assert again == three and tree_digest(tmp_path / "again") == tree_digest(tmp_path / "three")


def test_a_worker_that_cannot_start_is_one_line_error_not_a_hang(sample_dir, tmp_path):
    """Spawned workers re-import the main script; a script piped on stdin has none, so they die at start-up."""
    import subprocess
    import sys

    script = (f"from pathlib import Path; from rsdetect.config import SynthParams; "
              f"from rsdetect.synth.twins import synthesize; "
              f"synthesize(Path({str(sample_dir / 'instances.json')!r}), Path({str(tmp_path / 'out')!r}), 1, "
              f"SynthParams.model_validate({with_params(P, size=64, workers=2).model_dump()!r}))")
    res = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "RsdetectError: synthesize: a worker process died" in res.stderr
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def _malformed_dataset(root: Path) -> dict[str, int]:
    """Good photos plus one of each malformed entry a user has met; returns image ids by role."""
    rng = np.random.default_rng(1)
    person = [40, 20, 90, 20, 95, 110, 60, 115, 35, 110]
    images, anns = [], []

    def photo(name: str) -> None:
        noise = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
        _write(root / "images" / name, cv2.imencode(".jpg", noise)[1].tobytes())

    def ann(image_id, seg, **extra):
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, "segmentation": seg,
                     "area": 4000.0, "bbox": [0, 0, 1, 1], **extra})

    for i in range(1, 9):  # eight good photos, one person each
        photo(f"good{i}.jpg")
        images.append({"id": i, "file_name": f"good{i}.jpg"})
        ann(i, [person])
    ann(1, [person[:7]])                          # odd number of coordinates: was "cannot reshape array of size 7"
    ann(2, [["40", "20", "90", "20", "95", "110"]])  # strings
    ann(3, [person], id="seven")                  # a non-integer id
    photo("onlybad.jpg")
    images.append({"id": 20, "file_name": "onlybad.jpg"})
    ann(20, [person[:7]])                         # its only person is malformed: that photo has no usable person
    images.append({"id": 21})                     # no file_name
    images.append({"id": 4, "file_name": "good1.jpg"})  # duplicate id: would write a second row for one path
    _write(root.parent / "other" / "images" / "x.jpg", (root / "images" / "good1.jpg").read_bytes())
    images.append({"id": 22, "file_name": "../../other/images/x.jpg"})  # readable, but outside the dataset
    images.append("not an entry")
    ann(99, [person])                             # no image has id 99
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                     "categories": [{"id": 1, "name": "person"}]}))
    return {"onlybad": 20}


def test_malformed_entries_skip_only_what_is_bad_each_counted_with_its_reason(tmp_path):
    root = tmp_path / "ds" / "raw"
    _malformed_dataset(root)
    report = synthesize(root / "instances.json", tmp_path / "synth", 1,
                        with_params(P, workers=1, min_person_area=50, kinds={"object": 1.0}))
    assert report["pairs"] == 8  # every good photo gives its pair; the photos with a bad extra person too
    by_reason = report["skipped_by_reason"]
    assert by_reason["image entry has no file_name"] == 1
    assert by_reason["duplicate image id 4 (its first entry is kept)"] == 1
    assert by_reason["file_name points outside the dataset's images folder"] == 1
    assert by_reason["image entry is not an object"] == 1
    assert any("no usable person" in r for r in by_reason)  # onlybad.jpg: its one person was malformed
    assert report["skipped"] == 5 == len(report["skipped_items"]) and report["photos"] == 8 + 1 + 4
    assert report["skipped_annotations_by_reason"] == {
        "polygon has an odd number of coordinates": 2, "polygon has a coordinate that is not a finite number": 1,
        "annotation has no integer id": 1, "annotation on an image id that no image entry has": 1}
    rows = read_manifest(tmp_path / "synth" / "manifest.csv")
    assert len({r["path"] for r in rows}) == len(rows) == 16  # one row per file, the duplicate id wrote none
    assert sum(r["image_id"] == 4 for r in rows) == 2
    assert not {r["image_id"] for r in rows} & {20, 21, 22}


def test_every_reader_of_the_dataset_gets_the_same_checks(tmp_path):
    """Training pairs and the external set go through photo_tasks too: no traceback, the same skips."""
    from rsdetect.synth.pairs import load_photos
    from rsdetect.synth.rengarajan import make_external

    root = tmp_path / "raw"
    _malformed_dataset(root)
    q = with_params(P, min_person_area=50)
    photos, skipped = load_photos(root / "instances.json", 1, q, "train")
    assert photos and skipped >= 4  # the four malformed entries at least
    people = {image_id: usable for image_id, _, usable in photos}
    assert all(people[i] for i in people if i != 20) and not people.get(20)  # the malformed person is never drawn
    report = make_external(root / "instances.json", tmp_path / "ext", 1, (q.val_fraction, q.test_fraction),
                           params_group("external", pairs_per_photo=1))
    assert report["pairs"] >= 1 and report["skipped_by_reason"]["image entry has no file_name"] == 1


def test_null_annotations_is_one_line_error_naming_the_file(tmp_path):
    (tmp_path / "instances.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                                         "annotations": None}))
    with pytest.raises(RsdetectError) as err:
        synthesize(tmp_path / "instances.json", tmp_path / "out", 1, P)
    assert str(err.value).startswith(f"{tmp_path / 'instances.json'}: 'annotations' must be a list")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_no_sample_error_gives_the_reasons_and_keeps_the_previous_output(sample_dir, tmp_path):
    out = tmp_path / "synth"
    synthesize(sample_dir / "instances.json", out, 5, with_params(P, workers=1))
    before = tree_digest(out)
    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "images" / "a.jpg").write_bytes(b"not an image")
    (tmp_path / "raw" / "instances.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}],
                                                                 "annotations": []}))
    with pytest.raises(RsdetectError) as err:
        synthesize(tmp_path / "raw" / "instances.json", out, 5, with_params(P, workers=1))
    msg = str(err.value)
    assert "no photo gave a sample (2 skipped: " in msg and "\n" not in msg
    assert "1 x image cannot be decoded (corrupt or truncated)" in msg and "1 x image entry has no file_name" in msg
    assert "see reasons in the report" not in msg  # no report is written: the reasons are in the line itself
    assert tree_digest(out) == before  # the previous complete output is untouched
