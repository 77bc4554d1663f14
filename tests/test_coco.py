"""fetch_coco2017 against a local HTTP server: happy path, checksum, network faults, resume, determinism."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
import time
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from rsdetect.datasets.coco import fetch_coco2017, select_images
from rsdetect.datasets.instances import image_problem
from rsdetect.errors import RsdetectError

from conftest import params_group, with_params

SAMPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-person-sample"
TIMEOUT_S = 0.5
SLOW_S = 1.2  # > TIMEOUT_S: the client must give up first


# ---------------------------------------------------------------- local server

class Handler(BaseHTTPRequestHandler):
    """Serves server.routes[path] = (mode, body); modes: ok, 404, slow, drop, flaky<N> (N x 500 first)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        server = self.server
        with server.lock:
            server.hits[self.path] += 1
            hits = server.hits[self.path]
        mode, body = server.routes.get(self.path, ("404", b""))
        try:
            if mode == "404" or (mode.startswith("flaky") and hits <= int(mode[5:])):
                self.send_error(404 if mode == "404" else 500)
                return
            if mode == "slow":
                time.sleep(SLOW_S)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            # "drop": promise the whole file, send half of it, then close the connection
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if mode == "drop" else body)
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left: expected for "slow"

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(routes: dict[str, tuple[str, bytes]]):
    """A threading HTTP server on 127.0.0.1:<free port> serving `routes`, shut down on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.routes, server.hits, server.lock = routes, Counter(), threading.Lock()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def server():
    with serve({}) as srv:
        yield srv


# ---------------------------------------------------------------- fixture dataset

def jpeg(seed: int, w: int = 64, h: int = 48) -> bytes:
    """A small smooth JPEG, different per seed."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def poly(x: float, y: float, s: float) -> list[float]:
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def person(ann_id: int, image_id: int, area: float = 400.0, crowd: int = 0, seg=None) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": crowd, "area": area,
            "bbox": [4, 4, 20, 20], "segmentation": seg if seg is not None else [poly(4, 4, 20)]}


def split_json(split: str, base: str, ids: dict[int, list[dict]]) -> dict:
    """COCO instances JSON for one split: images with coco_url on the server, given annotations, person + dog."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48, "license": 1,
               "coco_url": f"{base}/{split}/{i:012d}.jpg"} for i in ids]
    return {"info": {"description": "fixture"}, "licenses": [{"id": 1, "name": "x"}],
            "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                           {"id": 18, "name": "dog", "supercategory": "animal"}],
            "images": images, "annotations": [a for anns in ids.values() for a in anns]}


def fixture_splits(base: str) -> dict[str, dict]:
    """train: 1-4 usable, 5 crowd-only, 6 tiny, 7 dog-only, 8 RLE / 2-point polygon; val: 101-102 usable, 103 crowd."""
    train = {
        1: [person(11, 1)],
        2: [person(21, 2), person(22, 2, crowd=1, seg={"counts": "abc", "size": [48, 64]})],
        3: [person(31, 3), person(32, 3, area=10)],
        4: [person(41, 4, area=900, seg=[[1, 1, 2, 2], poly(0, 0, 30)])],
        5: [person(51, 5, crowd=1, seg={"counts": "abc", "size": [48, 64]})],
        6: [person(61, 6, area=10)],
        7: [{**person(71, 7), "category_id": 18}],
        8: [person(81, 8, seg={"counts": [1, 2], "size": [48, 64]}), person(82, 8, seg=[[1, 1, 2, 2]])],
    }
    val = {101: [person(1011, 101)], 102: [person(1021, 102), {**person(1022, 102), "category_id": 18}],
           103: [person(1031, 103, crowd=1, seg={"counts": "x", "size": [48, 64]})]}
    return {"train2017": split_json("train2017", base, train), "val2017": split_json("val2017", base, val)}


USABLE = {"train2017": [1, 2, 3, 4], "val2017": [101, 102]}


def make_zip(splits: dict[str, dict]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, data in splits.items():
            zf.writestr(f"annotations/instances_{split}.json", json.dumps(data))
        zf.writestr("annotations/captions_train2017.json", "{}")  # must not be touched
    return buf.getvalue()


@pytest.fixture
def coco(server):
    """Routes for the fixture dataset on `server`; returns (params, splits, image bytes by path)."""
    splits = fixture_splits(server.base)
    blob = make_zip(splits)
    server.routes["/annotations/annotations_trainval2017.zip"] = ("ok", blob)
    files = {}
    for split, data in splits.items():
        for im in data["images"]:
            files[f"/{split}/{im['file_name']}"] = jpeg(im["id"])
    server.routes.update({path: ("ok", body) for path, body in files.items()})
    p = params_group("fetch.coco2017", annotations_url=f"{server.base}/annotations/annotations_trainval2017.zip",
                   annotations_md5=hashlib.md5(blob).hexdigest(), annotations_size=len(blob),
                   train_images=4, test_images=2, min_person_area=100, workers=4,
                   timeout_s=TIMEOUT_S, retries=1, max_failed_fraction=0.0)
    return p, splits, files


def image_path(image_id: int) -> str:
    return f"/{'val2017' if image_id > 100 else 'train2017'}/{image_id:012d}.jpg"


def no_partials(out: Path) -> None:
    """No temp file anywhere and every image under its final name decodes completely."""
    assert not [f for f in out.rglob("*") if f.name.endswith(".tmp") or f.name.startswith(".")]
    for f in (out / "images").iterdir():
        assert image_problem(f.read_bytes()) is None, f


# ---------------------------------------------------------------- tests

def test_happy_path(tmp_path, server, coco):
    p, splits, files = coco
    out = tmp_path / "coco"
    report = fetch_coco2017(p, out, seed=0)
    assert report == {"selected": 6, "downloaded": 6, "reused": 0, "failed": 0, "failures": [],
                      "bytes": sum(len(files[image_path(i)]) for i in (1, 2, 3, 4, 101, 102))}
    assert json.loads((out / "report.json").read_text()) == report
    inst = json.loads((out / "instances.json").read_text())
    assert [im["id"] for im in inst["images"]] == [1, 2, 3, 4, 101, 102]
    assert {im["id"]: im["coco_split"] for im in inst["images"]} == {1: "train2017", 2: "train2017", 3: "train2017",
                                                                     4: "train2017", 101: "val2017", 102: "val2017"}
    assert inst["categories"] == [{"id": 1, "name": "person", "supercategory": "person"}]
    # all person annotations of the selected images, crowd and tiny ones included, unmodified; no dogs
    assert sorted(a["id"] for a in inst["annotations"]) == [11, 21, 22, 31, 32, 41, 1011, 1021]
    train_anns = {a["id"]: a for a in splits["train2017"]["annotations"]}
    assert next(a for a in inst["annotations"] if a["id"] == 22) == train_anns[22]
    assert inst["images"][0] == {**splits["train2017"]["images"][0], "coco_split": "train2017"}
    for im in inst["images"]:
        assert (out / "images" / im["file_name"]).read_bytes() == files[image_path(im["id"])]
    assert sorted(f.name for f in (out / "images").iterdir()) == sorted(im["file_name"] for im in inst["images"])
    assert (tmp_path / ".coco-cache" / "annotations_trainval2017.zip").is_file()
    text = (out / "instances.json").read_text()
    assert text == json.dumps(inst, sort_keys=True) + "\n"
    no_partials(out)


def test_rerun_reuses_everything_and_is_byte_identical(tmp_path, server, coco):
    p, _, _ = coco
    out = tmp_path / "coco"
    fetch_coco2017(p, out, seed=0)
    first = (out / "instances.json").read_bytes()
    server.hits.clear()
    report = fetch_coco2017(p, out, seed=0)
    assert (report["downloaded"], report["reused"], report["bytes"]) == (0, 6, 0)
    assert sum(server.hits.values()) == 0  # verified cached zip and valid images: no request at all
    assert (out / "instances.json").read_bytes() == first


def test_md5_mismatch_is_one_line_error(tmp_path, server, coco):
    p, _, _ = coco
    bad = with_params(p, annotations_md5="0" * 32)
    with pytest.raises(RsdetectError) as exc:
        fetch_coco2017(bad, tmp_path / "coco", seed=0)
    msg = str(exc.value)
    assert "\n" not in msg and p.annotations_url in msg and "0" * 32 in msg and p.annotations_md5 in msg
    assert not (tmp_path / ".coco-cache" / "annotations_trainval2017.zip").exists()  # never cached as verified
    with pytest.raises(RsdetectError, match="size 123 does not|annotations_size 123"):
        fetch_coco2017(with_params(p, annotations_size=123), tmp_path / "coco", seed=0)


def test_checks_can_be_skipped_and_bad_cache_is_refetched(tmp_path, server, coco):
    p, _, _ = coco
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "annotations_trainval2017.zip").write_bytes(b"garbage from an interrupted copy")
    report = fetch_coco2017(p, tmp_path / "coco", seed=0, cache_dir=cache)
    assert report["downloaded"] == 6
    assert server.hits["/annotations/annotations_trainval2017.zip"] == 1
    # "" md5 and size 0 skip the checks (a hand-made annotations zip)
    unchecked = with_params(p, annotations_md5="", annotations_size=0)
    assert fetch_coco2017(unchecked, tmp_path / "coco", seed=0, cache_dir=cache)["reused"] == 6


def test_local_annotations_and_mirror(tmp_path, server, coco):
    p, splits, files = coco
    blob = server.routes["/annotations/annotations_trainval2017.zip"][1]
    zip_path = tmp_path / "annotations_trainval2017.zip"
    zip_path.write_bytes(blob)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for path, body in files.items():
        (mirror / Path(path).name).write_bytes(body)
    for n, (ann_url, base) in enumerate(((str(zip_path), str(mirror)), (zip_path.as_uri(), mirror.as_uri() + "/"))):
        server.hits.clear()
        q = with_params(p, annotations_url=ann_url, image_base_url=base)
        out = tmp_path / f"out{n}"
        report = fetch_coco2017(q, out, seed=0)
        assert (report["downloaded"], report["failed"]) == (6, 0)
        assert sum(server.hits.values()) == 0  # air-gapped: nothing from the network
        assert report["failures"] == []
    # an HTTP mirror: base + file_name instead of coco_url
    server.routes.update({f"/mirror/{Path(k).name}": v for k, v in server.routes.items() if k.endswith(".jpg")})
    server.hits.clear()
    report = fetch_coco2017(with_params(p, image_base_url=server.base + "/mirror/"), tmp_path / "m", seed=0)
    assert report["downloaded"] == 6
    assert {k for k in server.hits if k.endswith(".jpg")} == {f"/mirror/{Path(image_path(i)).name}"
                                                             for i in (1, 2, 3, 4, 101, 102)}
    with pytest.raises(RsdetectError, match="ftp://x: unsupported URL scheme"):
        fetch_coco2017(with_params(p, image_base_url="ftp://x"), tmp_path / "m", seed=0)


def set_faults(server) -> None:
    """404, truncated JPEG (complete HTTP body), slower than the timeout, connection dropped mid-file; 101 fails once
    then works."""
    for image_id, mode in ((1, "404"), (3, "slow"), (4, "drop"), (101, "flaky1")):
        server.routes[image_path(image_id)] = (mode, server.routes[image_path(image_id)][1])
    body = server.routes[image_path(2)][1]
    server.routes[image_path(2)] = ("ok", body[:-2])  # decodes (grey fill) but lacks the end-of-image marker


def test_faults_under_threshold_are_counted_and_left_out(tmp_path, server, coco):
    p, _, _ = coco
    set_faults(server)
    out = tmp_path / "coco"
    report = fetch_coco2017(with_params(p, max_failed_fraction=0.7), out, seed=0)
    assert (report["selected"], report["downloaded"], report["failed"]) == (6, 2, 4)
    reasons = {f["image_id"]: f["reason"] for f in report["failures"]}
    assert [f["image_id"] for f in report["failures"]] == [1, 2, 3, 4]
    assert "HTTP 404" in reasons[1]
    assert "truncated" in reasons[2]
    assert "timed out" in reasons[3]
    assert "connection dropped" in reasons[4] or "IncompleteRead" in reasons[4]
    assert report["failures"][0]["url"] == f"{server.base}{image_path(1)}"
    assert server.hits[image_path(1)] == 1  # a 404 is not retried
    assert server.hits[image_path(2)] == 2 and server.hits[image_path(4)] == 2  # retries = 1
    assert server.hits[image_path(101)] == 2  # retry recovered the transient 500
    inst = json.loads((out / "instances.json").read_text())
    assert [im["id"] for im in inst["images"]] == [101, 102]
    assert sorted(a["image_id"] for a in inst["annotations"]) == [101, 102]
    assert sorted(f.name for f in (out / "images").iterdir()) == ["000000000101.jpg", "000000000102.jpg"]
    no_partials(out)


def test_faults_over_threshold_raise(tmp_path, server, coco):
    p, _, _ = coco
    server.routes[image_path(1)] = ("404", b"")
    server.routes[image_path(2)] = ("drop", server.routes[image_path(2)][1])
    out = tmp_path / "coco"
    with pytest.raises(RsdetectError) as exc:
        fetch_coco2017(with_params(p, max_failed_fraction=0.25), out, seed=0)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("fetch: 2 of 6 images failed (> fetch.coco2017.max_failed_fraction=0.25); first: "
                          f"{server.base}{image_path(1)}: HTTP 404")
    assert not (out / "instances.json").exists()
    assert json.loads((out / "report.json").read_text())["failed"] == 2
    no_partials(out)


def test_resume_fetches_only_missing(tmp_path, server, coco):
    p, _, files = coco
    out = tmp_path / "coco"
    images = out / "images"
    images.mkdir(parents=True)
    # leftovers of a killed run: a cut file under a final name, a temp file, an image of an old selection
    (images / "000000000003.jpg").write_bytes(files[image_path(3)][:300])
    (images / ".000000000004.jpg.abc.tmp").write_bytes(b"partial")
    (images / "000000000007.jpg").write_bytes(files[image_path(7)])
    server.routes[image_path(2)] = ("404", b"")
    first = fetch_coco2017(with_params(p, max_failed_fraction=0.5), out, seed=0)
    assert (first["downloaded"], first["failed"], first["reused"]) == (5, 1, 0)
    assert not (images / "000000000007.jpg").exists() and not (images / "000000000002.jpg").exists()
    no_partials(out)

    server.routes[image_path(2)] = ("ok", files[image_path(2)])  # the network is back
    server.hits.clear()
    second = fetch_coco2017(p, out, seed=0)
    assert (second["downloaded"], second["reused"], second["failed"]) == (1, 5, 0)
    assert second["bytes"] == len(files[image_path(2)])
    assert {k: v for k, v in server.hits.items()} == {image_path(2): 1}  # only the missing image, zip cached
    assert len(json.loads((out / "instances.json").read_text())["images"]) == 6
    no_partials(out)


def test_selection_is_deterministic(tmp_path, server, coco):
    p, _, _ = coco
    q = with_params(p, train_images=2, test_images=1)
    ids = []
    for run in range(2):
        fetch_coco2017(q, tmp_path / f"run{run}", seed=5)
        ids.append([im["id"] for im in json.loads((tmp_path / f"run{run}" / "instances.json").read_text())["images"]])
    assert ids[0] == ids[1] and len(ids[0]) == 3
    assert set(ids[0]) <= set(USABLE["train2017"] + USABLE["val2017"])
    # a larger pool: same seed -> same ids, other seeds -> other subsets, never an unusable image
    big = {"categories": [{"id": 1, "name": "person"}],
           "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(200)],
           "annotations": [person(i, i, area=50 if i % 10 == 0 else 400) for i in range(200)]}
    pick = [[im["id"] for im in select_images(big, 20, s, "train2017", 100)] for s in (1, 1, 2)]
    assert pick[0] == pick[1] != pick[2]
    assert pick[0] == sorted(pick[0]) and not any(i % 10 == 0 for i in pick[0])
    assert pick[0] != [im["id"] for im in select_images(big, 20, 1, "val2017", 100)]


def test_real_sample_through_synthesis(tmp_path):
    """The shared COCO person sample served over HTTP, fetched, then synthesised into RS/GS pairs."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"{SAMPLE_DIR} not present")
    from rsdetect.synth.twins import synthesize

    ann = next(SAMPLE_DIR.glob("instances*.json"))
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w") as zf:
        zf.write(ann, "annotations/instances_train2017.json")
    routes = {"/ann.zip": ("ok", blob.getvalue())}
    routes.update({f"/img/{f.name}": ("ok", f.read_bytes()) for f in (SAMPLE_DIR / "images").iterdir()})
    with serve(routes) as srv:
        p = params_group("fetch.coco2017", annotations_url=f"{srv.base}/ann.zip", annotations_md5="",
                         annotations_size=0,
                       image_base_url=f"{srv.base}/img", train_images=20, test_images=0, workers=4,
                       timeout_s=10, retries=1)
        report = fetch_coco2017(p, tmp_path / "coco", seed=3)
    assert (report["selected"], report["downloaded"], report["failed"]) == (20, 20, 0)
    inst = json.loads((tmp_path / "coco" / "instances.json").read_text())
    assert {im["coco_split"] for im in inst["images"]} == {"train2017"}
    synth = synthesize(tmp_path / "coco" / "instances.json", tmp_path / "synth", 3,
                       params_group("synthesize", workers=1, pairs_per_photo=1))
    assert synth["pairs"] > 0
    assert (tmp_path / "synth" / "manifest.csv").is_file()
