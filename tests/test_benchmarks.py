"""Every benchmark script runs once, end to end, with tiny arguments, so none of them rots unnoticed. The numbers
they print are not checked (speed goals live in the benchmarks themselves); that each one finishes and prints its
table is."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import colour_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "coco-person-sample"

# name -> arguments; "{model}" is a tiny Keras model this module saves (a fresh clone has no models/model.keras)
TINY_RUNS = {
    "bench_fetch": ["--images", "4", "--latency-ms", "1"],
    "bench_footage": ["--model", "{model}", "--frames", "12", "--repeat", "1"],
    "bench_keep_flagged": ["--model", "{model}", "--frames", "12", "--repeat", "1"],
    "bench_infer": ["--model", "{model}", "--seconds", "0.2", "--batches", "1"],
    "bench_lines": ["--pairs", "1", "--folds", "2", "--repeats", "1", "--size", "64"],
    "bench_scan": ["--model", "{model}", "--frames", "8", "--cameras", "1"],
    "bench_shard": ["--model", "{model}", "--cameras", "2", "--frames", "8", "--repeat", "1"],
    "bench_synthesize": ["--photos", "2", "--repeats", "1", "--reference-photos", "1", "--generated", "--size", "64"],
    "bench_train": ["--steps", "1", "--photos", "4"],
    "bench_video": ["--frames", "12"],
    "bench_watch": ["--model", "{model}", "--frames", "8", "--cameras", "1", "--batch", "4"],
}
# bench_pull clones the repository and runs the whole pipeline twice: test_pipeline.py covers those commands.
NOT_RUN = {"bench_pull"}


def test_every_benchmark_has_a_tiny_run():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert scripts == set(TINY_RUNS) | NOT_RUN


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench-model") / "model.keras"
    colour_model(32).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_benchmark_runs_with_tiny_arguments(name, tiny_model):
    if name == "bench_lines" and not SHARED_PHOTOS.is_dir():
        pytest.skip("bench_lines reads the real photos in ../shared")
    args = [a.replace("{model}", str(tiny_model)) for a in TINY_RUNS[name]]
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, f"{name} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert res.stdout.strip(), f"{name} printed nothing"
