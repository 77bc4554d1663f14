"""Inference throughput of the RS detector: Keras (model called directly, and via predict_on_batch as
`rsdetect scan` does) vs TFLite (ai_edge_litert) vs ONNX Runtime, at batch 1, 8 and 32, plus each
runtime's max |probability - Keras probability|. With --quantized, also the quantized TFLite exports:
dynamic-range int8 weights, float16 weights, and full-integer int8 (weights and activations, calibrated on
--calibration training images of data/synth, else on the check images): on a CPU without VNNI (AVX2 only)
XNNPACK's int8 kernels are slower than its float32 ones, so scan exports float32.

Uses models/model.keras if present, else a fresh MobileNetV3Large(weights=None) 224px model (its BatchNorm
statistics recalibrated so outputs vary per image). Exports go through rsdetect.serve.export, scoring through
the same scorers `rsdetect scan` uses; preprocessing and decoding are not timed.
Run: python benchmarks/bench_infer.py [--model models/model.keras] [--seconds 3] [--batches 1 8 32] [--quantized]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rsdetect.errors import RsdetectError
from rsdetect.serve.export import check_inputs, onnx_bytes, tflite_bytes
from rsdetect.serve.loaders import Scorer, keras_scorer, onnx_scorer, tflite_scorer

ROOT = Path(__file__).resolve().parents[1]


def fresh_model(size: int = 224):
    """MobileNetV3Large(weights=None) + a sigmoid unit, BatchNorm stats set from random images so it is not constant."""
    import keras

    from rsdetect.model.backbone import recalibrate_batchnorm

    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV3Large(input_shape=(size, size, 3), weights=None, include_top=False,
                                                   pooling="avg", include_preprocessing=True)
    recalibrate_batchnorm(backbone, check_inputs(size, 16, seed=1))
    inp = keras.Input((size, size, 3), name="image")
    return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(backbone(inp, training=False)))


def frames_per_s(scorer: Scorer, x: np.ndarray, batch: int, seconds: float) -> float:
    """Frames/s of scorer on batches of `batch`, after one warm-up call, over >= `seconds` and >= 3 calls."""
    xb = np.ascontiguousarray(x[:batch])
    scorer(xb)  # warm-up: graph building, tensor allocation, thread pools
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        scorer(xb)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def calibration_images(size: int, n: int) -> np.ndarray:
    """n training images of data/synth (what the model sees), each as its model input; the check images if absent."""
    from rsdetect.preprocess import load_square

    paths = sorted((ROOT / "data" / "synth" / "images" / "train").glob("*.jpg"))
    if not paths:
        return check_inputs(size, n, seed=3)
    picks = np.random.default_rng(0).choice(len(paths), min(n, len(paths)), replace=False)
    return np.stack([load_square(paths[i], size) for i in sorted(picks)])


def quantization(mode: str, calibration: np.ndarray):
    """Converter options for tflite_bytes: dr (int8 weights), f16 (float16 weights) or int8 (full integer,
    activation ranges from `calibration`); float32 input and output either way, as scan feeds it."""
    import tensorflow as tf

    def configure(converter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "f16":
            converter.target_spec.supported_types = [tf.float16]
        elif mode == "int8":
            converter.representative_dataset = lambda: ([x[None]] for x in calibration)
    return configure


def build_runtimes(model, size: int, tmp: Path, calibration: np.ndarray | None = None) -> dict[str, Scorer | str]:
    """keras / tflite / onnx scorers (and quantized TFLite ones when `calibration` is given); a runtime that
    cannot be built maps to the reason why."""
    # "keras": the model called directly (eager), the reference; "keras-graph": predict_on_batch, what scan uses.
    runtimes: dict[str, Scorer | str] = {"keras": keras_scorer(model, compiled=False),
                                         "keras-graph": keras_scorer(model, compiled=True)}
    exporters: dict[str, tuple[Callable[[], bytes], Callable]] = {
        "tflite": (lambda: tflite_bytes(model), tflite_scorer),
        "onnx": (lambda: onnx_bytes(model, size), onnx_scorer),
    }
    if calibration is not None:
        for mode in ("dr", "f16", "int8"):
            exporters[f"tflite-{mode}"] = (lambda mode=mode: tflite_bytes(model, quantization(mode, calibration)),
                                           tflite_scorer)
    for name, (export, load) in exporters.items():
        t0 = time.perf_counter()
        try:
            path = tmp / f"model-{name}.{name.split('-')[0]}"
            path.write_bytes(export())
            runtimes[name] = load(path)[0]
            print(f"  exported {name} in {time.perf_counter() - t0:.1f} s ({path.stat().st_size / 1e6:.1f} MB)")
        except RsdetectError as exc:
            runtimes[name] = str(exc)
            print(f"  {name}: unavailable ({exc})")
    return runtimes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "model.keras"))
    ap.add_argument("--seconds", type=float, default=2.5, help="timing window per runtime and batch size")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--quantized", action="store_true", help="also dynamic-range, float16 and full-int8 TFLite")
    ap.add_argument("--calibration", type=int, default=200, help="images that calibrate full-int8 activations")
    args = ap.parse_args()

    t0 = time.perf_counter()
    if Path(args.model).is_file():
        from rsdetect.serve.loaders import load_keras_file

        model, source = load_keras_file(args.model), args.model
    else:
        model, source = fresh_model(), "fresh MobileNetV3Large(weights=None), BatchNorm recalibrated"
    size = int(model.input_shape[1])
    print(f"model: {source} ({size}px, {model.count_params() / 1e6:.2f} M params); "
          f"{os.cpu_count()} CPU cores; loaded in {time.perf_counter() - t0:.1f} s")
    x = check_inputs(size, max(32, *args.batches), seed=2)

    with tempfile.TemporaryDirectory() as tmp:
        calibration = calibration_images(size, args.calibration) if args.quantized else None
        runtimes = build_runtimes(model, size, Path(tmp), calibration)
        ref = runtimes["keras"](x)
        results: dict[str, dict[int, float]] = {}
        diffs: dict[str, float] = {}
        for name, scorer in runtimes.items():
            if isinstance(scorer, str):
                continue
            diffs[name] = float(np.abs(scorer(x) - ref).max())
            results[name] = {b: frames_per_s(scorer, x, b, args.seconds) for b in args.batches}

    base = results["keras"][args.batches[0]]
    print(f"\n{'runtime':<11} " + " ".join(f"{'b=' + str(b):>18}" for b in args.batches)
          + f" {'best':>10} {'max |dp| vs keras':>18}")
    for name, fps in results.items():
        best = max(fps, key=fps.get)
        cells = " ".join(f"{fps[b]:9.1f} ({fps[b] / base:5.2f}x)" for b in args.batches)
        print(f"{name:<11} {cells} {'b=' + str(best):>10} {diffs[name]:18.2e}")
    for name, scorer in runtimes.items():
        if isinstance(scorer, str):
            print(f"{name:<11} unavailable: {scorer}")
    print(f"\nframes/s (ratio vs keras at batch {args.batches[0]}); probability spread over the check images: "
          f"{float(np.ptp(ref)):.3f}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
