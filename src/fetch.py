"""Stage fetch: raw COCO-format data (images/ + instances.json + report.json) into OUT.

source sample: the embedded default, checked and merged: the drawn scenes (data/sample, data.dvc) and the real
photos whose licence allows shipping them (data/coco-licensed, data/coco-licensed.dvc), each by a param.
source coco2017: COCO 2017 annotations plus only the person images needed, downloaded.
"""
import sys
from pathlib import Path

from rsdetect.config import load_params
from rsdetect.errors import RsdetectError
from rsdetect.io import write_json
from rsdetect.stage import run_stage


def main() -> None:
    sample_dir, real_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    params = load_params()
    if params.fetch.source == "coco2017":
        from rsdetect.datasets.coco import fetch_coco2017

        report = fetch_coco2017(params.fetch.coco2017, out, params.seed)
    else:
        from rsdetect.datasets.embedded import DRAWN_ID_OFFSET, merge_datasets

        s = params.fetch.sample
        parts = [(d, name, offset) for d, name, offset, use in
                 ((sample_dir, "drawn", DRAWN_ID_OFFSET, s.drawn), (real_dir, "real", 0, s.real)) if use]
        if not parts:
            raise RsdetectError("fetch.sample: drawn and real are both false; nothing to fetch")
        for folder, _name, _ in parts:
            if not (folder / "instances.json").is_file():
                raise RsdetectError(f"{folder}: embedded dataset missing; run `dvc pull` "
                                    "(or `rsdetect make-sample` for the drawn scenes)")
        report = {"source": "sample", **merge_datasets(parts, out)}
        write_json(out / "report.json", report)
    print(f"fetch: {report}")


if __name__ == "__main__":
    run_stage(main)
