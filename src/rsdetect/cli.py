"""The `rsdetect` command line: thin wrappers over the package. Errors a user can fix print one line."""
from __future__ import annotations

import argparse
import sys

from rsdetect.stage import run_stage


def _make_sample(args: argparse.Namespace) -> None:
    from rsdetect.config import load_params
    from rsdetect.sample import make_sample_dataset

    p = load_params(args.params)
    s = p.fetch.sample
    print(make_sample_dataset(args.out, p.seed, s.n_images, s.width, s.height))


def _embed_photos(args: argparse.Namespace) -> None:
    from rsdetect.embedded import embed_licensed_photos

    print(embed_licensed_photos(args.sources, args.out))


def _check_photos(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    import keras

    from rsdetect.config import RsdetectError, load_params
    from rsdetect.io import write_json
    from rsdetect.realcheck import check_photos, held_out_photos

    params = load_params(args.params)
    for path in (args.model, args.evaluation):
        if not Path(path).is_file():
            raise RsdetectError(f"{path}: missing; run `dvc repro` first")
    threshold = json.loads(Path(args.evaluation).read_text())["models"]["cnn"]["threshold"]
    model = keras.saving.load_model(args.model, compile=False)
    photos = held_out_photos(args.folders, args.exclude)
    r = check_photos(lambda x: model(x, training=False), params.features.image_size, threshold, photos,
                     params.seed, params.synthesize, args.pairs)
    write_json(args.out, r)
    m = r["pairs_metrics"]
    print(f"check-photos: {r['photos']} held-out photos ({r['skipped']} unreadable), {r['pairs']} pairs: ROC AUC {m['roc_auc']:.3f}, "
          f"recall {m['recall']:.2f} / precision {m['precision']:.2f} at threshold {threshold:.3f}; ordinary photos flagged "
          f"{r['ordinary_photos_flagged']:.1%} (whole frames), twins flagged {r['twins_flagged']:.1%}; details in {args.out}")


def _register(args: argparse.Namespace) -> None:
    from rsdetect.registry import register_from_outputs

    register_from_outputs(args.params, args.model, args.evaluation, args.manifest, args.out, force=args.force)


def _scan(args: argparse.Namespace) -> None:
    from rsdetect.loaders import load_model
    from rsdetect.scan import ScanOptions, StopSignals, claim, interrupt_exit_code, run_scan
    from rsdetect.sources import parse_sources

    # Cheap checks first (options, sources, the report folder and its lock), then the slow model load.
    options = ScanOptions(every=1 if args.every is None else args.every, fps=args.fps, batch=args.batch, smooth=args.smooth,
                          threshold=args.threshold, annotate=args.annotate, max_frames=args.max_frames)
    sources = parse_sources(args.sources, args.cameras)
    sharded = args.workers != 1 or args.scheduler is not None
    if sharded:
        from rsdetect.shard import check_workers, describe_model, open_client, sharded_cameras

        check_workers(args.workers, args.scheduler)
    try:
        # SIGTERM while the model loads ends the run like Ctrl-C: lock released, nothing written yet.
        with StopSignals(), claim(args.out) as lock:
            if not sharded:
                result = run_scan(sources, load_model(args.model), lock.out, options, lock=lock)
            else:  # cameras spread over Dask workers, each loading the model once; this process only writes reports
                with open_client(args.workers, args.scheduler) as client:
                    result = run_scan(sources, describe_model(client, args.model), lock.out, options, lock=lock,
                                      cameras=sharded_cameras(client, args.model, options))
    except KeyboardInterrupt as exc:  # before scoring started (run_scan handles it once scoring runs)
        print("scan: interrupted", file=sys.stderr)
        sys.exit(interrupt_exit_code(exc))
    t = result.summary["totals"]
    rate = "n/a" if t["flagged_rate"] is None else f"{t['flagged_rate']:.1%}"
    state = " (interrupted)" if result.interrupted else ""
    print(f"scan{state}: {t['frames_scored']} frames from {t['cameras']} cameras, {t['flagged']} flagged ({rate}), "
          f"{t['failed_cameras']} cameras with failures; reports in {result.out_dir}")
    if result.exit_code:
        sys.exit(result.exit_code)


def _export(args: argparse.Namespace) -> None:
    from rsdetect.export import export_model

    r = export_model(args.model, args.format, args.out)
    print(f"export: {r['path']} ({r['format']}, {r['bytes'] / 1e6:.1f} MB, {r['image_size']}px); "
          f"max |p - p_keras| = {r['max_abs_diff']:.2g}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsdetect", description="Detect rolling-shutter distortion in camera frames.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("make-sample", help="regenerate the embedded default dataset (data/sample) from params")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--out", default="data/sample")
    s.set_defaults(func=_make_sample)
    e = sub.add_parser("embed-photos", help="copy the redistributable photos (COCO licence 4, 5, 7, 8) of COCO-format "
                                             "folders into data/coco-licensed, with an attribution file")
    e.add_argument("sources", nargs="+", metavar="FOLDER", help="a COCO-format folder: images/ and one instances*.json")
    e.add_argument("--out", default="data/coco-licensed")
    e.set_defaults(func=_embed_photos)
    c = sub.add_parser("check-photos", help="score a trained model on real photos it never saw: twin pairs drawn from "
                                             "them, and false alarms on the photos themselves")
    c.add_argument("folders", nargs="+", metavar="FOLDER", help="a COCO-format folder: images/ and one instances*.json")
    c.add_argument("--exclude", nargs="*", default=["data/coco-licensed/instances.json"], metavar="INSTANCES",
                   help="instances files whose photos are left out (default: the embedded real photos)")
    c.add_argument("--model", default="models/model.keras")
    c.add_argument("--evaluation", default="metrics/evaluate.json", help="its operating threshold is used")
    c.add_argument("--pairs", type=int, default=4, help="twin pairs drawn per photo (default 4)")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--out", default="metrics/real-photos.json")
    c.set_defaults(func=_check_photos)
    r = sub.add_parser("register", help="register the trained model in MLflow; move the champion alias if better")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--model", default="models/model.keras")
    r.add_argument("--evaluation", default="metrics/evaluate.json")
    r.add_argument("--manifest", default="data/synth/manifest.csv")
    r.add_argument("--out", default="metrics/register.json")
    r.add_argument("--force", action="store_true", help="move the alias even if the candidate is not better")
    r.set_defaults(func=_register)
    sc = sub.add_parser("scan", help="score frames of images, folders, globs, videos or streams; write reports")
    sc.add_argument("sources", nargs="*", metavar="SOURCE",
                    help="image, folder, glob, video or stream URL (rtsp://, http://); name it as cam1=SOURCE")
    sc.add_argument("--model", default="models:/rs-detector@champion",
                    help="models:/NAME@ALIAS, a pyfunc folder, or a .keras/.tflite/.onnx file")
    sc.add_argument("--out", default="scan-out", help="report folder (default: scan-out)")
    rate = sc.add_mutually_exclusive_group()
    rate.add_argument("--every", type=int, default=None, metavar="N", help="score every Nth frame")
    rate.add_argument("--fps", type=float, default=None, metavar="F",
                      help="score about F frames per second of video (image folders: use --every)")
    sc.add_argument("--batch", type=int, default=16, metavar="B", help="frames per step, and tiles per model call (default 16)")
    sc.add_argument("--smooth", type=int, default=1, metavar="K",
                    help="flag on the rolling mean of the last K scored frames per camera (default 1: no smoothing)")
    sc.add_argument("--threshold", type=float, default=None, metavar="T",
                    help="flag threshold (default: the registered model's; 0.5 for a plain model file)")
    sc.add_argument("--cameras", default=None, metavar="YAML", help="a YAML file {cameras: {name: source}}")
    sc.add_argument("--annotate", action="store_true", help="also write each video with its scores drawn on it")
    sc.add_argument("--max-frames", type=int, default=None, metavar="N", help="score at most N frames per source")
    sc.add_argument("--workers", type=int, default=1, metavar="N",
                    help="scan cameras on N worker processes of a local Dask cluster (default 1: this process)")
    sc.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="scan cameras on the workers of an existing Dask cluster, e.g. tcp://host:8786")
    sc.set_defaults(func=_scan)
    ex = sub.add_parser("export", help="export the Keras model to TFLite or ONNX, checked against Keras")
    ex.add_argument("--model", default="models:/rs-detector@champion", help="models:/NAME@ALIAS or a .keras file")
    ex.add_argument("--format", required=True, choices=["tflite", "onnx"])
    ex.add_argument("--out", required=True, metavar="PATH", help="output file (.tflite or .onnx)")
    ex.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_stage(lambda: args.func(args))


if __name__ == "__main__":
    main()
