"""Stage fetch: raw COCO-format data (images/ + instances.json + report.json) into OUT.

source sample: the embedded default (data/sample, tracked by data.dvc), checked and copied.
source coco2017: COCO 2017 annotations plus only the person images needed, downloaded.
"""
import shutil
import sys
from pathlib import Path

from rsdetect.cli import run_stage
from rsdetect.config import RsdetectError, load_params
from rsdetect.data import load_instances
from rsdetect.io import write_json


def main() -> None:
    sample_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    params = load_params()
    if params.fetch.source == "coco2017":
        from rsdetect.coco import fetch_coco2017

        report = fetch_coco2017(params.fetch.coco2017, out, params.seed)
    else:
        if not (sample_dir / "instances.json").is_file():
            raise RsdetectError(f"{sample_dir}: embedded dataset missing; run `dvc pull data.dvc` (or `rsdetect make-sample`)")
        coco = load_instances(sample_dir / "instances.json")
        if out.exists():  # data/raw persists between runs (for coco2017 resume); the sample copy starts clean
            shutil.rmtree(out)
        shutil.copytree(sample_dir / "images", out / "images")
        shutil.copy2(sample_dir / "instances.json", out / "instances.json")
        report = {"source": "sample", "images": len(coco["images"]), "annotations": len(coco["annotations"])}
        write_json(out / "report.json", report)
    print(f"fetch: {report}")


if __name__ == "__main__":
    run_stage(main)
