"""params.yaml's video.analysis with an experiment's `--set KEY=VALUE ...` in place of its values (a sweep), checked
by the schema: what experiments/real_shake.py and unseen_recheck.py measure with. A bad pair ends the run in one line
naming the program."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from rsdetect.config import VideoAnalysisParams, load_params, one_line, updated


def video_analysis(params: Path, pairs: list[str], prog: str) -> VideoAnalysisParams:
    analysis = load_params(params).video.analysis
    if not pairs:
        return analysis
    bare = [kv for kv in pairs if "=" not in kv]
    if bare:
        raise SystemExit(f"{prog}: --set {bare[0]}: give KEY=VALUE")
    try:
        return updated(analysis, **{k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in pairs)})
    except ValidationError as exc:
        raise SystemExit(f"{prog}: --set: video.analysis.{one_line(exc)}") from None
