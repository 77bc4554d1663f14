import hashlib
import json

import cv2
import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO

from rsdetect.config import load_params
from rsdetect.datasets.drawn import make_sample_dataset

from conftest import ROOT


@pytest.mark.slow
def test_shipped_snapshot_is_what_the_generator_makes(tmp_path):
    """data.dvc's content in dvc-store equals a fresh generation from params.yaml: the snapshot is reproducible."""
    p = load_params(ROOT / "params.yaml")
    out = tmp_path / "sample"
    make_sample_dataset(out, p.seed, p.fetch.sample.n_images, p.fetch.sample.width, p.fetch.sample.height)
    dir_md5 = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    listing = json.loads((ROOT / "dvc-store" / "files" / "md5" / dir_md5[:2] / dir_md5[2:]).read_text())
    expected = {e["relpath"]: e["md5"] for e in listing}
    made = {str(f.relative_to(out)): hashlib.md5(f.read_bytes()).hexdigest() for f in out.rglob("*") if f.is_file()}
    assert made == expected


def test_embedded_scenes_have_real_coco_quirks(sample_dir):
    coco = COCO(str(sample_dir / "instances.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    polys = [a for a in anns if not a["iscrowd"]]
    crowd = [a for a in anns if a["iscrowd"]]
    assert crowd and all(coco.annToMask(a).sum() > 0 for a in crowd)  # crowd RLE decodes
    assert any(len(a["segmentation"]) > 1 for a in polys)  # several parts (occluded people)
    assert any(a["area"] < 150 for a in polys)  # tiny people
    nonconvex = 0
    for a in polys:
        pts = np.array(a["segmentation"][0], np.float32).reshape(-1, 2)
        hull_area = cv2.contourArea(cv2.convexHull(pts))
        nonconvex += hull_area > 1.2 * cv2.contourArea(pts)
        img = coco.imgs[a["image_id"]]
        m = coco.annToMask(a)
        assert m.shape == (img["height"], img["width"]) and m.sum() > 0
    assert nonconvex > len(polys) // 2
    touching = [a for a in polys
                if a["bbox"][0] <= 1 or a["bbox"][0] + a["bbox"][2] >= coco.imgs[a["image_id"]]["width"] - 1]
    assert touching  # people cut by the image border
