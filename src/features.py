"""Stage features: the backbone's pooled features of every synthesized image, computed once and cached.

train (the head) and baselines reuse them; changing only head params never recomputes them.
"""
import sys
from pathlib import Path

import numpy as np

from rsdetect.cli import run_stage
from rsdetect.config import RsdetectError, load_params
from rsdetect.data import read_manifest
from rsdetect.io import atomic_write_bytes


def main() -> None:
    synth, out = Path(sys.argv[1]), Path(sys.argv[2])
    params = load_params()
    f = params.features
    from rsdetect import model as m

    m.set_determinism(params.seed, params.train.deterministic)
    rows = read_manifest(synth / "manifest.csv")
    paths = [str(synth / r["path"]) for r in rows]
    backbone = m.build_backbone(f.image_size, f.weights)
    if f.weights == "none":  # random init: BatchNorm statistics must come from data, or outputs are constant
        calib = [p for p, r in zip(paths, rows) if r["split"] == "train"][: f.calibration_images]
        m.recalibrate_batchnorm(backbone, m.load_images(calib, f.image_size))
    batch = m.gpu_batch_size(backbone, f.image_size, f.batch_size, f.gpu_max_batch, training=False)
    features = m.extract_features(backbone, paths, f.image_size, batch)
    if features.std(axis=0).max() == 0:
        raise RsdetectError("features: every image gives the same features; the backbone is degenerate")
    out.mkdir(parents=True, exist_ok=True)
    backbone.save(out / "backbone.keras")
    import io
    buf = io.BytesIO()
    np.savez(buf, features=features, paths=np.array([r["path"] for r in rows]))
    atomic_write_bytes(out / "features.npz", buf.getvalue())
    print(f"features: {features.shape[0]} images x {features.shape[1]} features")


if __name__ == "__main__":
    run_stage(main)
