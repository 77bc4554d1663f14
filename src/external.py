"""Stage external: an independent test set (Rengarajan et al. 2017 recipe) from our test-split photos only."""
import sys
from pathlib import Path

from rsdetect.config import load_params
from rsdetect.stage import run_stage
from rsdetect.synth.rengarajan import make_external


def main() -> None:
    raw, out = (Path(a) for a in sys.argv[1:3])
    params = load_params()
    s = params.synthesize  # the same split fractions as synthesize: the same test photos
    report = make_external(raw / "instances.json", out, params.seed, (s.val_fraction, s.test_fraction), params.external)
    shear = report["shear_px"]
    print(f"external: {report['pairs']} pairs from {report['photos']} test photos, {report['skipped']} skipped; "
          f"shear p10/p50/p90 {shear['p10']:.1f}/{shear['p50']:.1f}/{shear['p90']:.1f} px")


if __name__ == "__main__":
    run_stage(main)
