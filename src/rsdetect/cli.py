"""The `rsdetect` command line: thin wrappers over the package. Errors a user can fix print one line."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from rsdetect.config import RsdetectError


def run_stage(main: Callable[[], object]) -> None:
    """Run an entry point; an RsdetectError becomes one line on stderr and exit code 2."""
    try:
        main()
    except RsdetectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def _make_sample(args: argparse.Namespace) -> None:
    from rsdetect.config import load_params
    from rsdetect.sample import make_sample_dataset

    p = load_params(args.params)
    s = p.fetch.sample
    print(make_sample_dataset(args.out, p.seed, s.n_images, s.width, s.height))


def _register(args: argparse.Namespace) -> None:
    from rsdetect.registry import register_from_outputs

    register_from_outputs(args.params, args.model, args.evaluation, args.manifest, args.out, force=args.force)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsdetect", description="Detect rolling-shutter distortion in camera frames.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("make-sample", help="regenerate the embedded default dataset (data/sample) from params")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--out", default="data/sample")
    s.set_defaults(func=_make_sample)
    r = sub.add_parser("register", help="register the trained model in MLflow; move the champion alias if better")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--model", default="models/model.keras")
    r.add_argument("--evaluation", default="metrics/evaluate.json")
    r.add_argument("--manifest", default="data/synth/manifest.csv")
    r.add_argument("--out", default="metrics/register.json")
    r.add_argument("--force", action="store_true", help="move the alias even if the candidate is not better")
    r.set_defaults(func=_register)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_stage(lambda: args.func(args))


if __name__ == "__main__":
    main()
