"""Shared fixtures: small data the tests make themselves, and the optional real COCO sample."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
SHARED_COCO = ROOT.parent / "shared" / "data" / "coco-person-sample"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small embedded-style COCO dataset (24 scenes) made by the generator."""
    from rsdetect.sample import make_sample_dataset

    out = tmp_path_factory.mktemp("sample")
    make_sample_dataset(out, seed=3, n_images=24, width=200, height=150)
    return out


@pytest.fixture
def shared_coco() -> Path:
    """The real COCO photographs in ../shared; skip where absent (a user's clone has none)."""
    if not (SHARED_COCO / "instances_person_train2017_sample.json").is_file():
        pytest.skip("../shared/data/coco-person-sample is absent")
    return SHARED_COCO
