"""Editing a module makes `dvc status` report exactly the stages that import it (directly or through other
rsdetect modules), in a fresh copy of the repository: dvc.yaml's code deps work as dvc sees them, not only as
tests/test_dvc_deps.py reads them.

Nothing is run: the copy's dvc.lock is rewritten to record each stage's command and the md5 of its .py deps as
they are now (plain md5 of the bytes, which is DVC 3's file hash; test_lock_matches_the_copy checks that dvc
agrees). The committed dvc.lock cannot serve: it records the code of the last `dvc repro`, so in a branch with
code changes every edited file already shows as modified. Every stage must have a lock entry: for a stage with
none, dvc lists all its deps as modified whatever was edited, so the comparison would say nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_tracked_files
from test_dvc_deps import STAGES, code_deps

pytestmark = pytest.mark.slow  # a fresh copy of the repository and one `dvc status` per module


def _run(args: list[str], cwd: Path, env: dict) -> str:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n"
                                 f"{res.stderr[-2000:]}")
    return res.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> tuple[Path, dict]:
    """The repository's files (git ls-files, as tests/test_pipeline.py copies them) in a new git repo, with a
    dvc.lock that records the code as it is. Data and outputs are absent: dvc reports them, and the tests look
    only at .py deps."""
    repo = tmp_path_factory.mktemp("status") / "rsdetect"
    copy_tracked_files(repo)
    lock = {"schema": "2.0", "stages": {
        name: {"cmd": stage["cmd"],
               "deps": [{"path": d, "hash": "md5", "md5": hashlib.md5((repo / d).read_bytes()).hexdigest(),
                         "size": (repo / d).stat().st_size} for d in stage["deps"] if d.endswith(".py")]}
        for name, stage in STAGES.items()}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("PYTHONPATH", None)
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "copy"], repo, env)
    return repo, env


def modified_code(repo: Path, env: dict) -> dict[str, set[str]]:
    """Per stage, the .py deps `dvc status --json` reports as modified (its format: {stage: [{"changed deps":
    {path: "modified" | "deleted" | "new", "params.yaml": ...}}, {"changed outs": ...}, "changed command"]})."""
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], repo, env))
    found: dict[str, set[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict):
                changed = entry.get("changed deps", {})
                paths = {p for p, why in changed.items() if p.endswith(".py") and why == "modified"}
                if paths:
                    found.setdefault(stage, set()).update(paths)
    return found


def test_lock_matches_the_copy(copy):
    """Before any edit dvc sees no code change: the rewritten lock hashes files the way dvc does."""
    repo, env = copy
    assert modified_code(repo, env) == {}


# One module for each stage at least: embedded (fetch), figures (synthesize), rengarajan (external), pairs (pretrain,
# train), backbone (pretrain, features, train), head (train only: editing the head keeps the cached features),
# lines (baselines), metrics (train, baselines, evaluate, register), tracking (train, register), gate (register
# only: editing the champion gate reruns no training) and motion (video only: no model stage reruns for it).
MODULES = ["datasets/embedded.py", "synth/figures.py", "synth/rengarajan.py", "synth/pairs.py", "model/backbone.py",
           "model/head.py", "evaluation/lines.py", "evaluation/metrics.py", "registry/tracking.py", "registry/gate.py",
           "video/motion.py"]


def test_every_stage_imports_one_of_the_edited_modules():
    covered = {name for name in STAGES for m in MODULES
               if f"src/rsdetect/{m}" in code_deps(ROOT / "src" / f"{name}.py")}
    assert covered == set(STAGES)


@pytest.mark.parametrize("module", MODULES)
def test_editing_a_module_flags_exactly_the_stages_that_import_it(copy, module):
    repo, env = copy
    path = f"src/rsdetect/{module}"
    expected = {name for name in STAGES if path in code_deps(ROOT / "src" / f"{name}.py")}
    assert expected  # every module listed here is imported by some stage
    original = (repo / path).read_bytes()
    try:
        with open(repo / path, "a") as f:
            f.write("# an edit dvc must notice\n")
        assert modified_code(repo, env) == {name: {path} for name in expected}
    finally:
        (repo / path).write_bytes(original)
