"""Stage features: the backbone's pooled features of every synthesized image (and of the independent-recipe
test set), computed once and cached.

train (the head) and baselines reuse them; changing only head params never recomputes them.
"""
import io
import sys
from pathlib import Path

import numpy as np

from rsdetect.config import load_params
from rsdetect.errors import RsdetectError
from rsdetect.io import atomic_write_bytes
from rsdetect.stage import run_stage
from rsdetect.synth.manifest import read_manifest


def save_features(path: Path, features: np.ndarray, rows: list[dict]) -> None:
    buf = io.BytesIO()
    np.savez(buf, features=features, paths=np.array([r["path"] for r in rows]))
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    synth, external, weights_file, out = (Path(a) for a in sys.argv[1:5])
    params = load_params()
    f = params.features
    from rsdetect.model import backbone as m

    m.set_determinism(params.seed, True)
    rows = read_manifest(synth / "manifest.csv")
    paths = [str(synth / r["path"]) for r in rows]
    backbone = m.build_backbone(f.image_size, f.weights, f.backbone, weights_file)
    if f.weights == "none":  # random init: BatchNorm statistics must come from data, or outputs are constant
        calib = [p for p, r in zip(paths, rows, strict=False) if r["split"] == "train"][: f.calibration_images]
        m.recalibrate_batchnorm(backbone, m.load_images(calib, f.image_size))
    batch = m.gpu_batch_size(backbone, f.image_size, f.batch_size, f.gpu_max_batch)
    features = m.extract_features(backbone, paths, f.image_size, batch)
    if features.std(axis=0).max() == 0:
        raise RsdetectError("features: every image gives the same features; the backbone is degenerate")
    ext_rows = read_manifest(external / "manifest.csv")
    ext = m.extract_features(backbone, [str(external / r["path"]) for r in ext_rows], f.image_size, batch)
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(out / "backbone.weights.h5")  # HDF5 weights are byte-reproducible; train rebuilds the network
    save_features(out / "features.npz", features, rows)
    save_features(out / "external.npz", ext, ext_rows)
    print(f"features: {features.shape[0]} images (+{len(ext_rows)} external) x {features.shape[1]} features")


if __name__ == "__main__":
    run_stage(main)
