"""Stage synthesize: rolling-shutter / global-shutter twin pairs, split by source photo, plus a figure of pairs."""
import sys
from pathlib import Path

from rsdetect.config import load_params
from rsdetect.io import write_json
from rsdetect.stage import run_stage
from rsdetect.synth.figures import pairs_figure
from rsdetect.synth.twins import synthesize


def main() -> None:
    raw, out, metrics_path, figure_path = (Path(a) for a in sys.argv[1:5])
    params = load_params()
    report = synthesize(raw / "instances.json", out, params.seed, params.synthesize)
    keys = ("photos", "pairs", "skipped", "samples", "kinds", "skipped_by_reason", "skipped_annotations",
            "skipped_annotations_by_reason")
    write_json(metrics_path, {k: report[k] for k in keys})
    pairs_figure(out, figure_path)
    print(f"synthesize: {report['pairs']} pairs from {report['photos']} photos, {report['skipped']} skipped, "
          f"{report['skipped_annotations']} malformed person annotations left out (reasons in {out / 'report.json'})")


if __name__ == "__main__":
    run_stage(main)
