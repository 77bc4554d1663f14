"""The in-repo DVC remote (dvc-store/) holds every cached output dvc.lock records, so a fresh clone's
`dvc repro --pull` restores each unchanged stage instead of warning that the remote lacks its data (issue 22).
A stage re-run without `dvc push` leaves the remote behind: this test names what is missing."""
import json
from pathlib import Path

import yaml

from conftest import ROOT

STORE = ROOT / "dvc-store" / "files" / "md5"


def stored(md5: str) -> Path:
    return STORE / md5[:2] / md5[2:]


def cached_outs() -> dict[str, dict]:
    """{path: its dvc.lock entry} of every output dvc.yaml caches (outs, metrics and plots without cache: false),
    and of the .dvc files' outputs."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    outs = {}
    for name, stage in pipeline.items():
        locked = {o["path"]: o for o in lock[name]["outs"]}
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                path, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                if (opts or {}).get("cache", True):
                    outs[path] = locked[path]
    for dvcfile in ROOT.rglob("*.dvc"):
        if dvcfile.is_file() and not {".venv", ".dvc", "dvc-store"} & set(dvcfile.relative_to(ROOT).parts):
            for o in yaml.safe_load(dvcfile.read_text())["outs"]:
                outs[str((dvcfile.parent / o["path"]).relative_to(ROOT))] = o
    return outs


def missing_objects(entry: dict) -> list[str]:
    """The objects of one output (a file, or a directory's listing and its files) that dvc-store lacks."""
    md5 = entry["md5"]
    if not stored(md5).is_file():
        return [md5]
    if not md5.endswith(".dir"):
        return []
    return [f["md5"] for f in json.loads(stored(md5).read_text()) if not stored(f["md5"]).is_file()]


def test_the_remote_holds_every_cached_output():
    outs = cached_outs()
    assert {"data/raw", "data/synth", "data/features", "models", "data/pretrain", "data/sample"} <= set(outs)
    missing = {path: len(objs) for path, entry in outs.items() if (objs := missing_objects(entry))}
    assert not missing, f"dvc-store lacks objects of {missing}: run `dvc push` after `dvc repro` and commit dvc-store"
