"""The embedded default dataset: drawn hallway scenes (sample.py) plus the real COCO photographs that may ship
inside the project, those whose Flickr licence allows redistribution; and their merge into one COCO dataset.

`rsdetect embed-photos` copies them unmodified from COCO-format folders into one COCO-format dataset with an
attribution file, the real-photo half of the embedded default (data/coco-licensed, tracked by DVC). A model
trained only on drawn hallways cannot be expected to work on cameras; these give it real textures and lines.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from rsdetect.errors import RsdetectError
from rsdetect.io import atomic_write_text, staged_dir, write_json

# COCO licence ids that allow redistribution with attribution: CC BY 2.0, CC BY-SA 2.0, no known copyright
# restrictions, US Government work. The others (non-commercial and/or no-derivatives) never enter the repository.
REDISTRIBUTABLE = frozenset({4, 5, 7, 8})
ANNOTATION_LICENCE = ("COCO annotations: Creative Commons Attribution 4.0 "
                      "(https://creativecommons.org/licenses/by/4.0/), COCO Consortium")


def instances_file(folder: Path) -> Path:
    """The one instances*.json of a COCO-format folder; one line naming the folder if there is not exactly one."""
    found = sorted(folder.glob("instances*.json"))
    if len(found) != 1:
        raise RsdetectError(f"{folder}: expected one instances*.json, found {len(found)}")
    return found[0]


def embed_licensed_photos(sources: list[str | Path], out: str | Path) -> dict:
    """Copy the redistributable photos of COCO-format folders (images/ + instances*.json) into `out`.

    Writes out/images/*.jpg (bytes unchanged), out/instances.json (their images and annotations, the union of
    categories and licences) and out/ATTRIBUTION.md (per photo: COCO id, Flickr URL, licence name and URL).
    """
    images, annotations, categories, licences = [], [], {}, {}
    seen: set[int] = set()
    for folder in map(Path, sources):
        path = instances_file(folder)
        try:
            coco = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RsdetectError(f"{path}: cannot read COCO instances ({exc})") from None
        licences.update({int(lic["id"]): lic for lic in coco.get("licenses", [])})
        categories.update({int(c["id"]): c for c in coco.get("categories", [])})
        keep = [im for im in coco["images"] if im.get("license") in REDISTRIBUTABLE and im["id"] not in seen]
        ids = {im["id"] for im in keep}
        seen |= ids
        images += [{**im, "_src": str(folder / "images" / im["file_name"])} for im in keep]
        annotations += [a for a in coco["annotations"] if a["image_id"] in ids]
    if not images:
        raise RsdetectError(f"no photo with a redistributable licence ({sorted(REDISTRIBUTABLE)}) in "
                            f"{', '.join(map(str, sources))}")
    images.sort(key=lambda im: im["id"])
    annotations.sort(key=lambda a: a["id"])
    lines = ["# Attribution", "", ANNOTATION_LICENCE + ".", "",
             "Each photo is a Flickr photo from COCO 2017 (train2017), copied unmodified, under the licence named "
             "here.", "",
             "| COCO id | file | Flickr URL | licence |", "|---|---|---|---|"]
    with staged_dir(out) as stage:
        (stage / "images").mkdir()
        for im in images:
            src = Path(im.pop("_src"))
            if not src.is_file():
                raise RsdetectError(f"{src}: listed in the instances file but missing")
            shutil.copyfile(src, stage / "images" / im["file_name"])
            lic = licences.get(int(im["license"]), {"name": f"licence {im['license']}", "url": ""})
            lines.append(f"| {im['id']} | {im['file_name']} | {im.get('flickr_url', '')} | "
                         f"[{lic['name']}]({lic['url']}) |")
        write_json(stage / "instances.json", {
            "info": {"description": "COCO 2017 photos whose licence allows redistribution (ids 4, 5, 7, 8); "
                                    "original annotations", "url": "http://cocodataset.org", "year": 2017},
            "licenses": [licences[k] for k in sorted(licences)],
            "categories": [categories[k] for k in sorted(categories)],
            "images": images, "annotations": annotations})
        atomic_write_text(stage / "ATTRIBUTION.md", "\n".join(lines) + "\n")
    return {"images": len(images), "annotations": len(annotations),
            "with_person": len({a["image_id"] for a in annotations
                                if categories.get(a["category_id"], {}).get("name") == "person"})}


# Drawn scenes are numbered 1..n like COCO photos; moved past every COCO id (< 600,000) so both can be merged.
DRAWN_ID_OFFSET = 1_000_000_000


def merge_datasets(parts: list[tuple[str | Path, str, int]], out: str | Path) -> dict:
    """Merge COCO-format folders into `out` (images/<prefix>/..., instances.json), as `fetch` does for the default.

    Each part is (folder, prefix, id_offset): its files go under images/<prefix>/ and its image and annotation
    ids are shifted by id_offset, so ids stay unique. Categories keep their COCO ids. Each part goes through the
    checks every other reader uses (instances.checked_instances): an image entry without a usable id or
    file_name, and an annotation without integer ids or on such an image, is left out and counted in the report
    (`skipped_images`, `skipped_annotations`) instead of stopping the merge with a traceback.
    """
    from rsdetect.datasets.instances import checked_instances, load_instances

    images: list[dict] = []
    annotations: list[dict] = []
    categories: dict[int, dict] = {}
    skipped_images: list[dict] = []
    skipped_annotations = 0
    for folder, prefix, offset in parts:
        folder = Path(folder)
        coco = load_instances(folder / "instances.json")
        for c in coco.get("categories") or []:  # COCO's own ids (person = 1 in both parts)
            if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
                raise RsdetectError(f"{folder / 'instances.json'}: a category needs an integer id and a name, "
                                    f"got {c!r:.80}")
            if categories.setdefault(c["id"], c)["name"] != c["name"]:
                raise RsdetectError(f"{folder}: category id {c['id']} is {c['name']!r} here "
                                    f"but {categories[c['id']]['name']!r} elsewhere")
        checked = checked_instances(folder / "instances.json")
        skipped_images += [{**s, "part": prefix} for s in checked.skipped_images]
        valid = {im["id"] for im in checked.images}
        kept = [a for a in coco["annotations"] if isinstance(a, dict) and type(a.get("id")) is int
                and type(a.get("image_id")) is int and a["image_id"] in valid]
        skipped_annotations += len(coco["annotations"]) - len(kept)
        images += [{**im, "id": im["id"] + offset, "file_name": f"{prefix}/{im['file_name']}"} for im in checked.images]
        annotations += [{**a, "id": a["id"] + offset, "image_id": a["image_id"] + offset} for a in kept]
    ids = [im["id"] for im in images]
    if len(set(ids)) != len(ids):
        raise RsdetectError(f"{out}: image ids collide when merging {', '.join(str(p[0]) for p in parts)}")
    with staged_dir(out) as stage:
        for folder, prefix, _ in parts:
            shutil.copytree(Path(folder) / "images", stage / "images" / prefix)
        write_json(stage / "instances.json", {"categories": [categories[k] for k in sorted(categories)],
                                              "images": images, "annotations": annotations})
        for folder, prefix, _ in parts:
            if (Path(folder) / "ATTRIBUTION.md").is_file():
                shutil.copyfile(Path(folder) / "ATTRIBUTION.md", stage / f"ATTRIBUTION-{prefix}.md")
    return {"images": len(images), "annotations": len(annotations), "parts": [p[1] for p in parts],
            "skipped_images": skipped_images, "skipped_annotations": skipped_annotations}
