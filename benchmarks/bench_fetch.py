"""Image download throughput of rsdetect.datasets.coco: 1 worker vs params.yaml's worker count, on a local server.

Serves ~200 generated 640x480 JPEGs from 127.0.0.1 with an artificial per-request latency (to mimic a
network round trip), fetches them into temp dirs and prints images/s, MB/s and the speed-up.
Run: python benchmarks/bench_fetch.py [--images 200] [--latency-ms 20]
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import CocoParams, load_params, updated
from rsdetect.datasets.coco import ImageJob, download_images

ROOT = Path(__file__).resolve().parents[1]


def make_jpegs(n: int, seed: int = 0) -> dict[str, bytes]:
    """n photo-like 640x480 JPEGs (smooth colour field + noise, so sizes resemble COCO's ~100-200 kB)."""
    rng = np.random.default_rng(seed)
    files = {}
    for i in range(n):
        img = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        files[f"/img/{i:012d}.jpg"] = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    return files


def start_server(files: dict[str, bytes], latency_s: float) -> ThreadingHTTPServer:
    """A threaded HTTP server on a free 127.0.0.1 port, sleeping latency_s before each answer."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            time.sleep(latency_s)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def coco_params() -> CocoParams:
    """fetch.coco2017 of the repo's params.yaml: the worker count the pipeline uses is the one compared."""
    return load_params(ROOT / "params.yaml").fetch.coco2017


def run(files: dict[str, bytes], base: str, workers: int) -> tuple[float, int]:
    """Download all files with `workers` threads into a fresh temp dir; returns (seconds, bytes)."""
    p = updated(coco_params(), workers=workers, timeout_s=10, retries=1)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [ImageJob(i, base + path, Path(tmp) / Path(path).name) for i, path in enumerate(files)]
        start = time.perf_counter()
        results = download_images(jobs, p)
        elapsed = time.perf_counter() - start
    failed = [r for r in results if r.status != "downloaded"]
    assert not failed, failed[:3]
    return elapsed, sum(r.nbytes for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    args = ap.parse_args()
    files = make_jpegs(args.images)
    server = start_server(files, args.latency_ms / 1000)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"{len(files)} JPEGs 640x480, {sum(map(len, files.values())) / 1e6:.1f} MB, "
          f"{args.latency_ms:.0f} ms latency per request")
    timings, default = {}, coco_params().workers
    try:
        for workers in (1, default):
            seconds, nbytes = run(files, base, workers)
            timings[workers] = seconds
            print(f"workers={workers}: {seconds:6.2f} s  {len(files) / seconds:7.1f} images/s  "
                  f"{nbytes / 1e6 / seconds:6.1f} MB/s")
    finally:
        server.shutdown()
        server.server_close()
    one, many = timings[1], timings[default]
    print(f"speed-up {default} workers vs 1: {one / many:.2f}x")


if __name__ == "__main__":
    main()
