"""The `rsdetect` command line: thin wrappers over the package. Errors a user can fix print one line."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rsdetect.stage import run_stage


def _make_sample(args: argparse.Namespace) -> None:
    from rsdetect.config import load_params
    from rsdetect.datasets.drawn import make_sample_dataset

    p = load_params(args.params)
    s = p.fetch.sample
    print(make_sample_dataset(args.out, p.seed, s.n_images, s.width, s.height))


def _embed_photos(args: argparse.Namespace) -> None:
    from rsdetect.datasets.embedded import embed_licensed_photos

    print(embed_licensed_photos(args.sources, args.out))


def _check_photos(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    import keras

    from rsdetect.config import load_params
    from rsdetect.errors import RsdetectError
    from rsdetect.evaluation.photos import check_photos, held_out_photos
    from rsdetect.io import write_json

    params = load_params(args.params)
    for path in (args.model, args.evaluation):
        if not Path(path).is_file():
            raise RsdetectError(f"{path}: missing; run `dvc repro` first")
    threshold = json.loads(Path(args.evaluation).read_text())["models"]["cnn"]["threshold"]
    model = keras.saving.load_model(args.model, compile=False)
    # A relative --exclude (the default) is the project's file: found from anywhere, beside the params file.
    photos = held_out_photos(args.folders, args.exclude, base=Path(args.params).resolve().parent)
    r = check_photos(lambda x: model(x, training=False), params.features.image_size, threshold, photos,
                     params.seed, params.synthesize, args.pairs)
    write_json(args.out, r)
    m = r["pairs_metrics"]
    print(f"check-photos: {r['photos']} held-out photos ({r['skipped']} unreadable), {r['pairs']} pairs: "
          f"ROC AUC {m['roc_auc']:.3f}, "
          f"recall {m['recall']:.2f} / precision {m['precision']:.2f} at threshold {threshold:.3f}; "
          f"ordinary photos flagged "
          f"{r['ordinary_photos_flagged']:.1%} (whole frames), twins flagged {r['twins_flagged']:.1%}; "
          f"{r['excluded']} photos excluded, {len(r['skipped_entries'])} entries refused; details in {args.out}")


def _check_footage(args: argparse.Namespace) -> None:
    from rsdetect.config import load_params
    from rsdetect.evaluation.footage import check_footage
    from rsdetect.io import write_json
    from rsdetect.serve.sources import check_sensor

    analysis = load_params(args.params).video.analysis
    report = check_footage(args.videos, analysis, check_sensor(args.readout_ms, args.shutter, "--readout-ms/--shutter"),
                           args.max_frames)
    write_json(args.out, report)
    for name, e in report["videos"].items():
        if e["errors"]:
            print(f"check-footage: {name}: {e['errors'][-1]}", file=sys.stderr)
            continue
        r = e["readout"] or {}
        readout = (f"unknown{' (' + r['why'] + ')' if r.get('why') else ''}" if r.get("ms") is None
                   else f"{r['ms']:.1f} ms ({r['source']}"
                        f"{' from ' + r['method'] if r.get('method') else ''}"
                        # an estimate's 95% interval: what a user copies into readout_ms comes with how well it is known
                        f"{', 95% {:.1f}-{:.1f} ms'.format(*r['ci_ms']) if r['source'] == 'estimated' else ''}"
                        f", {r['evidence_frames']} frames)")
        per_ms = e["shear_px_per_ms_p95"]
        exposure = ("" if per_ms is None else f", shear per ms of readout {per_ms:.3f} px (p95 of frames with motion; "
                    f"{per_ms * analysis.typical_readout_ms:.1f} px at a typical {analysis.typical_readout_ms} ms)")
        print(f"check-footage: {name}: {e['frames']} frames at {e['fps']} fps, flagged {e['flag_rate']:.1%}, static "
              f"{e['static_rate']:.1%}, flagged without motion {e['flagged_without_motion']}, readout {readout}"
              f"{exposure}, {e['frames_per_s']} frames/s")
    print(f"check-footage: {report['totals']['videos']} videos, {report['totals']['failed']} failed; "
          f"details in {args.out}")
    if report["totals"]["failed"]:
        sys.exit(3)


def _deskew(args: argparse.Namespace) -> None:
    from rsdetect.serve.deskew import deskew_report

    done = deskew_report(args.report, args.out, args.originals)
    for message in done.messages:
        print(f"deskew: {message}", file=sys.stderr)
    print(f"deskew: {done.frames} flagged frames of {done.cameras} cameras written with their measured rolling-shutter "
          f"displacement undone to {args.out}" + (f"; {done.skipped} skipped" if done.skipped else ""))
    if done.skipped:
        sys.exit(3)


def _register(args: argparse.Namespace) -> None:
    from rsdetect.registry.gate import register_from_outputs

    register_from_outputs(args.params, args.model, args.evaluation, args.manifest, args.out, force=args.force)


def saved_serving(model: str | None):
    """The serving params (shear, video.analysis) saved with `model`: beside an exported .tflite/.onnx (`rsdetect
    export`), or in a registered model's config (the register stage: models:/, runs:/, a pyfunc folder); None where
    none are (a .keras file, an older export or registration)."""
    from pathlib import Path

    from rsdetect.serve.loaders import REGISTRY_PREFIXES, exported_serving, registered_serving

    if model is None:
        return None
    if model.startswith(REGISTRY_PREFIXES) or (Path(model) / "MLmodel").is_file():
        return registered_serving(model)
    return exported_serving(model) if Path(model).suffix in (".tflite", ".onnx") else None


def serve_params(params_path: str | None, model_only: bool = False, model: str | None = None):
    """(the `shear` params, the `video.analysis` params, or None and None, and why not), from --params, else the
    working folder's params.yaml, else those saved with `model` (saved_serving: a camera host with an exported or a
    registered model and no checkout). With none of them the shear estimate and the video evidence are off (video
    frames are scored by the model alone) and the summary says so; a given file must load."""
    from pathlib import Path

    from rsdetect.config import load_params

    if params_path is None and not Path("params.yaml").is_file():
        saved = saved_serving(model)
        if saved is None:
            return None, None, ("no params.yaml in the working folder and none saved with the model (give --params, "
                                "or export or register the model where params.yaml is)")
        shear, analysis = saved
        return shear, None if model_only else analysis, None
    params = load_params(params_path or "params.yaml")
    return params.shear, None if model_only else params.video.analysis, None


def explainer(model, shear, shear_note: str | None, sharded: str | None = None):
    """scan's and watch's Explainer: shear columns, and heatmaps where the model is here. `sharded` (the command):
    the model is on the Dask workers, so the shear columns are measured there and no heatmaps are drawn."""
    from rsdetect.serve.explain import Explainer

    if sharded is None:
        return Explainer(model.keras_model, model.image_size, model.kind, shear, shear_note)
    return Explainer(None, model.image_size, model.kind, shear, shear_note,
                     cam_note=f"sharded {sharded} (--workers/--scheduler): the model is on the workers")


def _scan(args: argparse.Namespace) -> None:
    from rsdetect.serve.loaders import load_model
    from rsdetect.serve.reports import camera_ranking
    from rsdetect.serve.scan import ScanOptions, claim, run_scan
    from rsdetect.serve.signals import StopSignals, interrupt_exit_code

    # Cheap checks first (options, sources, the report folder and its lock), then the slow model load.
    shear, analysis, shear_note = serve_params(args.params, args.model_only, args.model)
    options = ScanOptions(every=1 if args.every is None else args.every, fps=args.fps, batch=args.batch,
                          smooth=args.smooth, threshold=args.threshold, annotate=args.annotate,
                          max_frames=args.max_frames, analysis=analysis)
    sources = sources_of(args)
    sharded = args.workers != 1 or args.scheduler is not None
    if sharded:
        from rsdetect.serve.shard import check_workers, describe_model, open_client, sharded_cameras

        check_workers(args.workers, args.scheduler)
    try:
        # SIGTERM while the model loads ends the run like Ctrl-C: lock released, nothing written yet.
        with StopSignals("scan"), claim(args.out) as lock:
            if not sharded:
                model = load_model(args.model)
                result = run_scan(sources, model, lock.out, options, lock=lock,
                                  explain=explainer(model, shear, shear_note))
            else:  # cameras spread over Dask workers, each loading the model once; this process only writes reports
                with open_client(args.workers, args.scheduler) as client:
                    model = describe_model(client, args.model)
                    result = run_scan(sources, model, lock.out, options, lock=lock,
                                      explain=explainer(model, shear, shear_note, sharded="scan"),
                                      cameras=sharded_cameras(client, args.model, options))
    except KeyboardInterrupt as exc:  # before scoring started (run_scan handles it once scoring runs)
        print("scan: interrupted", file=sys.stderr)
        sys.exit(interrupt_exit_code(exc))
    t = result.summary["totals"]
    rate = "n/a" if t["flagged_rate"] is None else f"{t['flagged_rate']:.1%}"
    state = " (interrupted)" if result.interrupted else ""
    print(f"scan{state}: {t['frames_scored']} frames from {t['cameras']} cameras, {t['flagged']} flagged ({rate}), "
          f"{t['failed_cameras']} cameras with failures; reports in {result.out_dir}")
    for line in camera_ranking(result.summary["cameras"], None if analysis is None else analysis.typical_readout_ms):
        print(f"scan: {line}")
    if result.exit_code:
        sys.exit(result.exit_code)


def _watch(args: argparse.Namespace) -> None:
    from rsdetect.serve.loaders import load_model
    from rsdetect.serve.signals import StopSignals
    from rsdetect.serve.watch.loop import WatchOptions, run_watch, watch_claim
    from rsdetect.serve.watch.metrics import MetricsServer, WatchMetrics

    # Cheap checks first (options, sources, report folder and lock, metrics port), then the slow model load.
    shear, analysis, shear_note = serve_params(args.params, args.model_only, args.model)
    options = WatchOptions(every=1 if args.every is None else args.every, fps=args.fps, batch=args.batch,
                           smooth=args.smooth, threshold=args.threshold, max_frames=args.max_frames,
                           duration=args.duration, stall_timeout=args.stall_timeout,
                           reconnect_initial=args.reconnect_initial, reconnect_max=args.reconnect_max,
                           rotate_rows=args.rotate_rows, rotate_seconds=args.rotate_seconds,
                           keep_rotated=args.keep_rotated, summary_interval=args.summary_interval, analysis=analysis,
                           keep_flagged=args.keep_flagged)
    sources = sources_of(args)
    sharded = args.workers != 1 or args.scheduler is not None
    if sharded:
        from rsdetect.serve.shard import check_workers, describe_model, open_client
        from rsdetect.serve.watch.shard import check_sharded_options, run_sharded_watch

        check_sharded_options(options)

        check_workers(args.workers, args.scheduler)
    metrics = WatchMetrics()
    try:
        # SIGTERM while the model loads stops the watch before it starts: lock released, nothing written.
        with StopSignals("watch"), watch_claim(args.out) as lock, \
                MetricsServer(metrics, args.metrics_host, args.metrics_port) as server:
            print(f"watch: metrics on {server.url}", file=sys.stderr, flush=True)
            if not sharded:
                model = load_model(args.model)
                result = run_watch(sources, model, lock.out, options, metrics, lock=lock,
                                   explain=explainer(model, shear, shear_note))
            else:  # cameras watched on Dask workers, each loading the model once; this process keeps the reports
                with open_client(args.workers, args.scheduler) as client:
                    model = describe_model(client, args.model)
                    result = run_sharded_watch(client, args.model, sources, model, lock.out, options, metrics,
                                               lock=lock, explain=explainer(model, shear, shear_note, sharded="watch"))
    except KeyboardInterrupt:  # before scoring started (run_watch handles signals once it runs)
        print("watch: stopped before it started", file=sys.stderr)
        return
    t = result.summary["totals"]
    rate = "n/a" if t["flagged_rate"] is None else f"{t['flagged_rate']:.1%}"
    kept = t["flagged_frames"]
    saved = "" if kept is None else (f", {kept['saved']} saved to flagged/ ({kept['kept']} kept"
                                     + (f", {kept['missed']} missed)" if kept["missed"] else ")"))
    print(f"watch ({result.stopped_by}): {t['frames_scored']} frames from {t['cameras']} cameras, "
          f"{t['flagged']} flagged ({rate}){saved}, {t['reconnects']} reconnects, {t['frames_dropped']} dropped; "
          f"reports in {result.out_dir}")


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rsdetect.config import load_params, serving_mapping, serving_params
    from rsdetect.serve.export import export_model

    # the serving params go with the model (its sidecar): from --params, else params.yaml where there is one, else
    # those the model was registered with
    path = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
    serving = None if path is None else serving_params(load_params(path))
    if serving is None and (saved := saved_serving(args.model)) is not None:
        serving, path = serving_mapping(*saved), f"{args.model}'s registration"
    r = export_model(args.model, args.format, args.out, serving=serving)
    print(f"export: {r['path']} ({r['format']}, {r['bytes'] / 1e6:.1f} MB, {r['image_size']}px); "
          f"max |p - p_keras| = {r['max_abs_diff']:.2g}; "
          + (f"shear and video.analysis params from {path} saved beside it" if serving is not None else
             "no params.yaml here: scan and watch with it need --params or a params.yaml for video evidence"))


def _sensor_args(p: argparse.ArgumentParser, model_only: bool = True) -> None:
    """--readout-ms / --shutter: what is known of the sensors of the cameras given on the command line (a camera in
    --cameras YAML says its own: {source: ..., readout_ms: 18} or {source: ..., shutter: global})."""
    p.add_argument("--readout-ms", type=float, default=None, metavar="MS",
                   help="the cameras' sensor readout time in ms (default: estimated from the footage where it can be)")
    p.add_argument("--shutter", default=None, choices=("rolling", "global"),
                   help="the cameras' shutter; global: never rolling-shutter distorted")
    if not model_only:
        return
    p.add_argument("--model-only", action="store_true",
                   help="score video frames with the single-frame model too, not by their measured motion and "
                        "readout (the video evidence; see docs/scanning.md)")


def sources_of(args: argparse.Namespace) -> list:
    """The Sources of a scan/watch/check-footage command line, sensors checked (one line each when wrong)."""
    from rsdetect.serve.sources import check_sensor, parse_sources

    return parse_sources(args.sources, args.cameras,
                         check_sensor(args.readout_ms, args.shutter, "--readout-ms/--shutter"))


def _explain_and_shard_args(p: argparse.ArgumentParser, verb: str) -> None:
    """--params (the shear estimate) and --workers / --scheduler (Dask), the same for scan and watch."""
    p.add_argument("--params", default=None, metavar="YAML",
                   help="params file whose `shear` and `video.analysis` groups set the shear estimate and the video "
                        "evidence (default: params.yaml if present, else those saved beside an exported --model)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help=f"{verb} cameras on N worker processes of a local Dask cluster (default 1: this process)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help=f"{verb} cameras on the workers of an existing Dask cluster, e.g. tcp://host:8786")


def _scoring_args(p: argparse.ArgumentParser, verb: str, out: str, batch: str) -> None:
    """The options scan and watch share: what is scored (sources, --cameras, --model), which frames, how they are
    batched, smoothed and flagged, where the reports go, the sensors, --params and Dask. What differs is said by
    `out` (how `verb` writes its report folder) and `batch` (whose frames make a step)."""
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="image, folder, glob, video or stream URL (rtsp://, http://); name it as cam1=SOURCE")
    p.add_argument("--model", default="models:/rs-detector@champion",
                   help="models:/NAME@ALIAS, a pyfunc folder, or a .keras/.tflite/.onnx file")
    p.add_argument("--out", default=f"{verb}-out", help=f"report folder, {out} (default: %(default)s)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--every", type=int, default=None, metavar="N", help="score every Nth frame")
    rate.add_argument("--fps", type=float, default=None, metavar="F",
                      help="score about F frames per second of video, per camera (image folders: use --every)")
    p.add_argument("--batch", type=int, default=16, metavar="B",
                   help=f"{batch}, and tiles per model call (default %(default)s)")
    p.add_argument("--smooth", type=int, default=1, metavar="K",
                   help="flag on the rolling mean of the last K scored frames per camera (default 1: no smoothing)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="flag threshold (default: the registered model's; 0.5 for a plain model file)")
    p.add_argument("--cameras", default=None, metavar="YAML", help="a YAML file {cameras: {name: source}}")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="score at most N frames per camera")
    _sensor_args(p)
    _explain_and_shard_args(p, verb)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsdetect", description="Detect rolling-shutter distortion in camera frames.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], None], summary: str) -> argparse.ArgumentParser:
        """The subcommand `name`, whose arguments main() hands to `func`."""
        p = sub.add_parser(name, help=summary)
        p.set_defaults(func=func)
        return p

    s = command("make-sample", _make_sample, "regenerate the embedded default dataset (data/sample) from params")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--out", default="data/sample")
    e = command("embed-photos", _embed_photos, "copy the redistributable photos (COCO licence 4, 5, 7, 8) of "
                "COCO-format folders into data/coco-licensed, with an attribution file")
    e.add_argument("sources", nargs="+", metavar="FOLDER", help="a COCO-format folder: images/ and one instances*.json")
    e.add_argument("--out", default="data/coco-licensed")
    c = command("check-photos", _check_photos, "score a trained model on real photos it never saw: twin pairs "
                "drawn from them, and false alarms on the photos themselves")
    c.add_argument("folders", nargs="+", metavar="FOLDER", help="a COCO-format folder: images/ and one instances*.json")
    c.add_argument("--exclude", nargs="*", default=["data/coco-licensed/instances.json"], metavar="INSTANCES",
                   help="instances files whose photos are left out (default: the embedded real photos)")
    c.add_argument("--model", default="models/model.keras")
    c.add_argument("--evaluation", default="metrics/evaluate.json", help="its operating threshold is used")
    c.add_argument("--pairs", type=int, default=4, help="twin pairs drawn per photo (default 4)")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--out", default="metrics/real-photos.json")
    f = command("check-footage", _check_footage, "the video evidence on real footage: flag rates, static frames, "
                "readout estimates, frames/s (no model)")
    f.add_argument("videos", nargs="+", metavar="VIDEO", help="video files or stream URLs; name them as cam1=VIDEO")
    f.add_argument("--params", default="params.yaml", help="its video.analysis group measures the motion")
    f.add_argument("--max-frames", type=int, default=None, metavar="N", help="read at most N frames per video")
    f.add_argument("--out", default="metrics/footage.json")
    _sensor_args(f, model_only=False)
    r = command("register", _register, "register the trained model in MLflow; move the champion alias if better")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--model", default="models/model.keras")
    r.add_argument("--evaluation", default="metrics/evaluate.json")
    r.add_argument("--manifest", default="data/synth/manifest.csv")
    r.add_argument("--out", default="metrics/register.json")
    r.add_argument("--force", action="store_true", help="move the alias even if the candidate is not better")
    sc = command("scan", _scan, "score frames of images, folders, globs, videos or streams; write reports")
    _scoring_args(sc, "scan", out="replaced whole when the scan ends", batch="one camera's frames per step")
    sc.add_argument("--annotate", action="store_true", help="also write each video with its scores drawn on it")
    w = command("watch", _watch, "score cameras continuously: reconnecting readers, Prometheus metrics, rolling "
                "reports; SIGTERM or Ctrl-C stop it cleanly")
    _scoring_args(w, "watch", out="updated in place", batch="frames per step, across cameras")
    w.add_argument("--metrics-host", default="127.0.0.1", help="address of the /metrics endpoint (0.0.0.0: all)")
    w.add_argument("--metrics-port", type=int, default=9109, metavar="PORT",
                   help="its port (0: any free one; default 9109)")
    w.add_argument("--stall-timeout", type=float, default=10.0, metavar="S",
                   help="a stream with no frame for S seconds is reconnected (default 10)")
    w.add_argument("--reconnect-initial", type=float, default=1.0, metavar="S",
                   help="first reconnect delay (default 1)")
    w.add_argument("--reconnect-max", type=float, default=60.0, metavar="S",
                   help="longest reconnect delay; delays double up to it (default 60)")
    w.add_argument("--rotate-rows", type=int, default=100_000, metavar="N", help="rotate frames.jsonl/csv after N rows")
    w.add_argument("--rotate-seconds", type=float, default=None, metavar="S", help="... or after S seconds")
    w.add_argument("--keep-rotated", type=int, default=5, metavar="K", help="rotated files kept (default 5)")
    w.add_argument("--summary-interval", type=float, default=10.0, metavar="S",
                   help="rewrite summary.json, worst frames and chart every S seconds (default 10)")
    w.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    w.add_argument("--keep-flagged", type=int, default=0, metavar="N",
                   help="save each camera's newest N flagged video frames as decoded, flagged/<camera>_<frame>.bmp, "
                        "named in their rows (frame_file) for a correction step to apply `unroll` to (default 0: none)")
    d = command("deskew", _deskew, "write a scan's or watch's flagged video frames with their measured rolling-shutter "
                "displacement undone (frames.jsonl's `unroll`), for a correction step")
    d.add_argument("report", metavar="REPORT", help="a scan's or watch's --out folder (its frames.jsonl names the "
                   "videos, or the frames a watch saved with --keep-flagged)")
    d.add_argument("--out", default="deskew-out", help="folder for <camera>_<frame>.png, replaced whole "
                   "(default: %(default)s)")
    d.add_argument("--originals", action="store_true", help="also write each frame as decoded, <camera>_<frame>"
                   "_original.png")
    ex = command("export", _export, "export the Keras model to TFLite or ONNX, checked against Keras")
    ex.add_argument("--model", default="models:/rs-detector@champion", help="models:/NAME@ALIAS or a .keras file")
    ex.add_argument("--format", required=True, choices=["tflite", "onnx"])
    ex.add_argument("--out", required=True, metavar="PATH", help="output file (.tflite or .onnx)")
    ex.add_argument("--params", default=None, metavar="YAML",
                    help="params file whose shear and video.analysis groups are saved beside the model, for scan and "
                         "watch where no params.yaml is (default: params.yaml if present)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_stage(lambda: args.func(args))


if __name__ == "__main__":
    main()
