"""A new runner's `dvc repro --pull` from a fresh clone: cold (today) vs warm (a shared cache remote).

- cold: a clone of the commit whose only remote is the in-repo `embedded` one, as every fresh clone has today:
  it pulls the embedded dataset and the backbone, then re-runs synthesize .. register.
- warm: a second clone of the same commit (with the cold run's dvc.lock, committed in the first clone) whose
  default remote is a directory remote holding every stage output: it pulls them and runs no stage.

The warm remote is the cold run's cache pushed to a new folder (`dvc push`, timed too), or `--warm-remote DIR`:
any directory remote that already holds the outputs of the commit's dvc.lock. A DVC cache folder has the same
layout, so a checkout's `.dvc/cache` after `dvc repro` serves (it is only read), and `--legs warm` then times
the warm leg alone. Prints each leg's time, the stages it ran, and cold / warm.

Run: python benchmarks/bench_pull.py [--repo .] [--commit HEAD] [--legs cold,warm] [--warm-remote DIR]
                                     [--params overrides.yaml] [--keep]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: str, cwd: Path, env: dict) -> str:
    """Run a shell command; its output, or exit with one line naming the command and its last output line."""
    res = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    out = res.stdout + res.stderr
    if res.returncode != 0:
        last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["(no output)"]
        sys.exit(f"bench_pull: `{cmd}` in {cwd} failed ({res.returncode}): {last[0]}")
    return out


def bench_env(work: Path) -> dict:
    """The stages' environment: this interpreter's tools, each clone's own src/ (no PYTHONPATH), runs logged to a
    throwaway MLflow store, and a git identity for the commit of the cold run's dvc.lock."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="b@b",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="b@b")
    return env


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` key by key (nested mappings merged, other values replaced)."""
    return {k: merge(base[k], over[k]) if isinstance(over.get(k), dict) and isinstance(base.get(k), dict)
            else over.get(k, base.get(k)) for k in {**base, **over}}


def clone(origin: str, commit: str, dest: Path, env: dict) -> None:
    sh(f"git clone -q {origin} {dest} && git -C {dest} checkout -q {commit}", dest.parent, env)


def timed_repro(repo: Path, env: dict) -> tuple[float, list[str]]:
    """`dvc repro --pull` in `repo`: seconds, and the stages it ran."""
    start = time.perf_counter()
    out = sh("dvc repro --pull", repo, env)
    return time.perf_counter() - start, re.findall(r"Running stage '([^']+)'", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=str(ROOT), help="repository to clone (its committed state)")
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--legs", default="cold,warm", help="cold,warm | warm (needs --warm-remote)")
    ap.add_argument("--warm-remote", help="a directory remote (or DVC cache folder) holding every stage output")
    ap.add_argument("--params", help="YAML of params overrides committed into the clones first (a quick dry run)")
    ap.add_argument("--workdir", help="where the clones go (default: a new temp folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the clones")
    args = ap.parse_args()
    legs = set(args.legs.split(","))
    if not legs <= {"cold", "warm"} or not legs:
        sys.exit(f"bench_pull: --legs {args.legs}: give cold,warm or warm")
    if legs == {"warm"} and not args.warm_remote:
        sys.exit("bench_pull: --legs warm needs --warm-remote (the cold leg is what fills a new one)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pull."))
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env(work)
    commit = sh(f"git rev-parse {args.commit}", Path(args.repo), env).strip()
    origin, results = args.repo, {}
    try:
        if args.params:  # one commit both clones check out: the given one plus the overrides
            origin = str(work / "origin")
            clone(args.repo, commit, Path(origin), env)
            params = merge(yaml.safe_load((Path(origin) / "params.yaml").read_text()),
                           yaml.safe_load(Path(args.params).read_text()))
            (Path(origin) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            sh("git commit -qam 'bench_pull: params overrides'", Path(origin), env)
            commit = sh("git rev-parse HEAD", Path(origin), env).strip()
        remote = Path(args.warm_remote).resolve() if args.warm_remote else work / "warm-remote"
        if "cold" in legs:
            cold = work / "cold"
            clone(origin, commit, cold, env)
            results["cold"] = timed_repro(cold, env)
            cold_s, cold_ran = results["cold"]
            print(f"cold: {cold_s:.1f} s, ran {len(cold_ran)} stages: {' '.join(cold_ran)}")
            if not args.warm_remote:
                start = time.perf_counter()
                sh(f"dvc remote add --local warm {remote} && dvc push -r warm", cold, env)
                print(f"push of every output to the warm remote: {time.perf_counter() - start:.1f} s")
            # the warm runner checks out the commit that records this run: its dvc.lock
            sh("git add -A && git commit -q --allow-empty -m 'bench_pull: dvc.lock of the cold run'", cold, env)
            origin, commit = str(cold), sh("git rev-parse HEAD", cold, env).strip()
        warm = work / "warm"
        clone(origin, commit, warm, env)
        sh(f"dvc remote add --local -d warm {remote}", warm, env)
        results["warm"] = timed_repro(warm, env)
        status = sh("dvc status", warm, env)
        print(f"warm: {results['warm'][0]:.1f} s, ran {len(results['warm'][1])} stages"
              f"{': ' + ' '.join(results['warm'][1]) if results['warm'][1] else ''}; dvc status: "
              f"{'clean' if 'Data and pipelines are up to date.' in status else status.strip()}")
        if "cold" in results:
            print(f"cold / warm: {results['cold'][0] / results['warm'][0]:.1f}x "
                  f"(same machine, same run; timings on a shared machine are noisy)")
    finally:
        if args.keep or args.workdir:
            print(f"clones kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
