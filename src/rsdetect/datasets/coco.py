"""Fetch a reproducible person subset of COCO 2017: annotations zip, selected images, a COCO-format instances.json.

Everything is resumable: a verified annotations zip in the cache and every image already on disk that
decodes are reused, so a rerun after an interruption or a network fault fetches only what is missing.
Downloads go to a temp file beside the target and are renamed into place only once complete and valid.
"""
from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from rsdetect.config import CocoParams
from rsdetect.datasets.instances import image_problem, person_category_ids, usable_person
from rsdetect.errors import RsdetectError
from rsdetect.io import atomic_file, atomic_write_bytes, atomic_write_text, file_md5, write_json

SPLITS = {"train2017": "annotations/instances_train2017.json", "val2017": "annotations/instances_val2017.json"}
SPLIT_SALT = {"train2017": 0, "val2017": 1}  # distinct random streams per split from the one seed
CHUNK = 1 << 16
BACKOFF_S = 0.2
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "rsdetect-fetch/0.1 (+python-urllib)"
# What a flaky network raises; socket.timeout is TimeoutError on Python >= 3.10, HTTPError is a URLError.
NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)
T = TypeVar("T")


class _Attempt(Exception):
    """One failed download attempt: a one-line reason and whether another try can help."""

    def __init__(self, reason: str, retryable: bool = True):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


@dataclass(frozen=True)
class ImageJob:
    image_id: int
    url: str
    dest: Path


@dataclass(frozen=True)
class ImageResult:
    image_id: int
    url: str
    status: str  # "downloaded" | "reused" | "failed"
    nbytes: int = 0
    reason: str = ""


# ---------------------------------------------------------------- transport

def _is_local(url: str) -> bool:
    """True for file:// URLs and plain paths (a one-letter scheme is a Windows drive, not a scheme)."""
    scheme = urllib.parse.urlsplit(url).scheme
    return scheme == "file" or len(scheme) <= 1


def _local_path(url: str) -> Path:
    """The filesystem path behind a file:// URL or plain path."""
    if urllib.parse.urlsplit(url).scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    return Path(url)


def _as_url(url: str) -> str:
    """An URL urllib can open: plain paths become file:// URLs; http(s) and file:// pass through."""
    scheme = urllib.parse.urlsplit(url).scheme
    if len(scheme) <= 1:
        return _local_path(url).resolve().as_uri()
    if scheme not in ("http", "https", "file"):
        raise RsdetectError(f"{url}: unsupported URL scheme {scheme!r} (use http(s)://, file:// or a local path)")
    return url


def _stream(url: str, timeout: float, sink: Callable[[bytes], None]) -> int:
    """GET `url`, passing each chunk to `sink`; returns the byte count. Raises _Attempt on any transfer fault."""
    request = urllib.request.Request(_as_url(url), headers={"User-Agent": USER_AGENT})
    total = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            expected = resp.headers.get("Content-Length")
            while chunk := resp.read(CHUNK):
                sink(chunk)
                total += len(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _Attempt(f"HTTP {exc.code} {exc.reason}", exc.code in RETRYABLE_HTTP) from None
    except urllib.error.URLError as exc:
        # file:// misses are permanent; a network-level reason (refused, DNS, timeout) may pass
        missing = isinstance(exc.reason, FileNotFoundError)
        raise _Attempt(f"cannot open ({_describe(exc.reason)})", not missing) from None
    except NETWORK_ERRORS as exc:
        raise _Attempt(_describe(exc)) from None
    # Chunked reads return b"" on a dropped connection instead of raising: compare with Content-Length.
    if expected is not None and expected.isdigit() and total != int(expected):
        raise _Attempt(f"connection dropped: got {total} of {expected} bytes")
    return total


def _describe(exc: object) -> str:
    """A short one-line description of a network exception."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, str):  # URLError.reason may be a plain message
        return exc
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _with_retries(fn: Callable[[], T], retries: int) -> T:
    """Call `fn` up to retries + 1 times with exponential backoff while it raises a retryable _Attempt."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except _Attempt as exc:
            if not exc.retryable or attempt == retries:
                raise
            time.sleep(BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- annotations

def _file_digest(path: Path) -> tuple[int, str]:
    """Size and md5 of a file."""
    return path.stat().st_size, file_md5(path)


def _verify_problem(size: int, md5: str, p: CocoParams) -> str | None:
    """Why (size, md5) does not match the params, or None; an empty md5 / zero size skips that check."""
    if p.annotations_size and size != p.annotations_size:
        return f"size {size} bytes does not match fetch.coco2017.annotations_size {p.annotations_size}"
    if p.annotations_md5 and md5 != p.annotations_md5.lower():
        return f"md5 {md5} does not match fetch.coco2017.annotations_md5 {p.annotations_md5}"
    return None


def _download_to(url: str, dest: Path, timeout: float) -> None:
    """Stream `url` into a temp file beside `dest` with a byte progress bar, then rename it into place."""
    with atomic_file(dest) as f, tqdm(unit="B", unit_scale=True, desc=f"fetch {dest.name}", leave=False) as bar:
        def sink(chunk: bytes) -> None:
            f.write(chunk)
            bar.update(len(chunk))
        _stream(url, timeout, sink)


def fetch_annotations(p: CocoParams, cache_dir: str | Path) -> Path:
    """The verified annotations zip: a local path/file:// used in place, else downloaded once into cache_dir."""
    url = p.annotations_url
    if _is_local(url):
        path = _local_path(url)
        if not path.is_file():
            raise RsdetectError(f"{url}: annotations zip not found (fetch.coco2017.annotations_url)")
        problem = _verify_problem(*_file_digest(path), p)
        if problem:
            raise RsdetectError(f"{url}: {problem}")
        return path
    dest = Path(cache_dir) / (Path(urllib.parse.urlsplit(url).path).name or "annotations.zip")
    if dest.is_file():
        problem = _verify_problem(*_file_digest(dest), p)
        if problem is None:
            return dest  # resume: verified earlier, never fetch 250 MB twice
        print(f"fetch: cached {dest} is stale ({problem}); downloading again", file=sys.stderr)
    try:
        _with_retries(lambda: _download_to(url, dest, p.timeout_s), p.retries)
    except _Attempt as exc:
        raise RsdetectError(f"{url}: annotations download failed ({exc.reason})") from None
    problem = _verify_problem(*_file_digest(dest), p)
    if problem:
        dest.unlink()  # a bad file must not pass as a verified cache on the next run
        raise RsdetectError(f"{url}: {problem}")
    return dest


def read_split(zip_path: Path, split: str, url: str) -> dict | None:
    """The parsed instances JSON of one split from the zip, or None when the zip lacks it."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            if SPLITS[split] not in zf.namelist():
                return None
            with zf.open(SPLITS[split]) as f:
                return json.load(f)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RsdetectError(f"{url}: cannot read {SPLITS[split]} from the annotations zip ({exc})") from None


# ---------------------------------------------------------------- selection

def select_images(coco: dict, n: int, seed: int, split: str, min_area: float) -> list[dict]:
    """Up to n images with a usable person, drawn reproducibly from the sorted ids; returned sorted by id."""
    persons = person_category_ids(coco)
    ok = {int(a["image_id"]) for a in coco.get("annotations", [])
          if a.get("category_id") in persons and usable_person(a, min_area)}
    ids = np.array(sorted(ok), dtype=np.int64)
    rng = np.random.default_rng([seed, 2017, SPLIT_SALT[split]])
    chosen = set(ids[rng.permutation(len(ids))[:n]].tolist())
    return sorted((im for im in coco["images"] if int(im["id"]) in chosen), key=lambda im: int(im["id"]))


def person_subset(coco: dict, images: list[dict], split: str) -> tuple[list[dict], list[dict], list[dict]]:
    """Selected images tagged with coco_split, ALL their person annotations (crowd included) and the person category."""
    persons = person_category_ids(coco)
    ids = {int(im["id"]) for im in images}
    anns = [a for a in coco.get("annotations", []) if a.get("category_id") in persons and int(a["image_id"]) in ids]
    cats = [c for c in coco.get("categories", []) if int(c["id"]) in persons]
    return [{**im, "coco_split": split} for im in images], anns, cats


# ---------------------------------------------------------------- images

def image_url(image: dict, base: str) -> str:
    """Where to get an image: its coco_url, or base + file_name when a mirror is set."""
    return f"{base.rstrip('/')}/{image['file_name']}" if base else image["coco_url"]


def _reusable(dest: Path) -> bool:
    """True when a previous run left a complete, decodable image at `dest`."""
    try:
        return image_problem(dest.read_bytes()) is None
    except FileNotFoundError:
        return False


def fetch_image(job: ImageJob, p: CocoParams) -> ImageResult:
    """Reuse a valid image on disk, else download it with retries; validated before it takes its final name."""
    if _reusable(job.dest):
        return ImageResult(job.image_id, job.url, "reused")

    def attempt() -> bytes:
        chunks: list[bytes] = []
        _stream(job.url, p.timeout_s, chunks.append)
        data = b"".join(chunks)
        problem = image_problem(data)
        if problem:
            raise _Attempt(problem)  # a proxy or CDN may serve a cut file once; a retry can help
        return data

    try:
        data = _with_retries(attempt, p.retries)
    except _Attempt as exc:
        return ImageResult(job.image_id, job.url, "failed", reason=exc.reason)
    atomic_write_bytes(job.dest, data)
    return ImageResult(job.image_id, job.url, "downloaded", nbytes=len(data))


def download_images(jobs: list[ImageJob], p: CocoParams) -> list[ImageResult]:
    """Fetch all jobs with p.workers threads and a progress bar; results sorted by image id."""
    results, nbytes = [], 0
    pool = ThreadPoolExecutor(max_workers=p.workers)
    try:
        with tqdm(total=len(jobs), desc="fetch coco2017", unit="img") as bar:
            futures = [pool.submit(fetch_image, job, p) for job in jobs]
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                nbytes += result.nbytes
                bar.set_postfix_str(tqdm.format_sizeof(nbytes, "B"), refresh=False)
                bar.update(1)
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C stop queued downloads instead of finishing them all
    return sorted(results, key=lambda r: r.image_id)


def remove_stale(images_dir: Path, keep: set[str]) -> None:
    """Delete files under images_dir not in `keep` (old selections, temp files of killed runs)."""
    if not images_dir.is_dir():
        return
    for path in images_dir.iterdir():
        if path.is_file() and path.name not in keep:
            path.unlink()


# ---------------------------------------------------------------- entry point

def _select_all(zip_path: Path, p: CocoParams, seed: int) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """Select per split, keeping only the subset in memory (train2017 alone is ~450 MB of JSON)."""
    header: dict = {}
    images: list[dict] = []
    anns: list[dict] = []
    cats: dict[int, dict] = {}
    wanted = [(split, n) for split, n in (("train2017", p.train_images), ("val2017", p.test_images)) if n > 0]
    for split, n in wanted:
        coco = read_split(zip_path, split, p.annotations_url)
        if coco is None:  # e.g. a hand-made zip with train2017 only: fetch what there is
            print(f"fetch: {p.annotations_url} has no {SPLITS[split]}; 0 {split} images", file=sys.stderr)
            continue
        header = header or {k: coco[k] for k in ("info", "licenses") if k in coco}
        chosen = select_images(coco, n, seed, split, p.min_person_area)
        if len(chosen) < n:
            print(f"fetch: only {len(chosen)} {split} images have a usable person (asked {n})", file=sys.stderr)
        split_images, split_anns, split_cats = person_subset(coco, chosen, split)
        images += split_images
        anns += split_anns
        cats.update({int(c["id"]): c for c in split_cats})
    return header, images, anns, sorted(cats.values(), key=lambda c: int(c["id"]))


def _failure_message(report: dict, p: CocoParams) -> str | None:
    """The one-line error when more than max_failed_fraction of the selected images failed, else None."""
    failed, selected = report["failed"], report["selected"]
    if not failed or failed / selected <= p.max_failed_fraction:
        return None
    first = report["failures"][0]
    return (f"fetch: {failed} of {selected} images failed (> fetch.coco2017.max_failed_fraction="
            f"{p.max_failed_fraction}); first: {first['url']}: {first['reason']}")


def _report(results: list[ImageResult]) -> dict:
    """Counts, failures (by image id) and downloaded bytes of one run."""
    failed = [r for r in results if r.status == "failed"]
    return {
        "selected": len(results), "downloaded": sum(r.status == "downloaded" for r in results),
        "reused": sum(r.status == "reused" for r in results), "failed": len(failed),
        "failures": [{"image_id": r.image_id, "url": r.url, "reason": r.reason} for r in failed],
        "bytes": sum(r.nbytes for r in results),
    }


def fetch_coco2017(p: CocoParams, out_dir: str | Path, seed: int, cache_dir: str | Path | None = None) -> dict:
    """Fetch the person subset into out_dir (images/, instances.json, report.json); returns the report."""
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    zip_path = fetch_annotations(p, Path(cache_dir) if cache_dir else out_dir.parent / ".coco-cache")
    header, images, anns, cats = _select_all(zip_path, p, seed)
    if not images:
        members = " or ".join(SPLITS[s] for s, n in (("train2017", p.train_images), ("val2017", p.test_images)) if n)
        raise RsdetectError(f"{p.annotations_url}: no image with a usable person in "
                            f"{members or 'no split (0 images asked)'} "
                            f"(fetch.coco2017.min_person_area={p.min_person_area})")
    if p.image_base_url:
        _as_url(p.image_base_url)  # a bad scheme is one error up front, not one failure per image
    images.sort(key=lambda im: int(im["id"]))
    remove_stale(images_dir, {im["file_name"] for im in images})
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [ImageJob(int(im["id"]), image_url(im, p.image_base_url), images_dir / im["file_name"]) for im in images]
    results = download_images(jobs, p)
    dest = {job.image_id: job.dest for job in jobs}
    for r in results:
        if r.status == "failed":  # an invalid leftover under the final name would pass for data downstream
            dest[r.image_id].unlink(missing_ok=True)
    report = _report(results)
    write_json(out_dir / "report.json", report)
    problem = _failure_message(report, p)
    if problem:
        (out_dir / "instances.json").unlink(missing_ok=True)  # no stale subset beside a failed run's report
        raise RsdetectError(problem)
    ok = {r.image_id for r in results if r.status != "failed"}
    subset = {**header, "images": [im for im in images if int(im["id"]) in ok],
              "annotations": sorted((a for a in anns if int(a["image_id"]) in ok), key=lambda a: int(a["id"])),
              "categories": cats}
    atomic_write_text(out_dir / "instances.json", json.dumps(subset, sort_keys=True) + "\n")
    return report
