"""The `keras-compress` command: demo, convert, validate, schema, benchmark."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _cmd_schema(args):
    from keras_compress.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_validate(args):
    from keras_compress.config import ConfigError, load_config

    try:
        config = load_config(Path(args.file))
    except ConfigError as err:
        print(f"{args.file}: invalid config\n{err}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    print(config.summary())
    return 0


def _cmd_convert(args):
    from keras_compress.export.openvino import convert_saved_model

    try:
        xml = convert_saved_model(args.saved_model, args.output, compress_to_fp16=args.fp16)
    except (FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(xml)
    return 0


def _cmd_benchmark(args):
    from keras_compress.benchmark import benchmark_models, compile_ir, runtime_precisions
    from keras_compress.statistics import format_table

    paths = {"model": args.model}
    if args.vs:
        paths["vs"] = args.vs
    for path in paths.values():
        if not Path(path).is_file():
            print(f"error: no IR file at {path!r}", file=sys.stderr)
            return 1
    try:
        compiled = {n: compile_ir(p, args.precision) for n, p in paths.items()}
    except Exception as err:  # noqa: BLE001 - OpenVINO raises several error types
        print(f"error: OpenVINO could not compile the model: {err}", file=sys.stderr)
        return 1
    results = benchmark_models(compiled, batch_size=args.batch_size, rounds=args.rounds)
    rows = []
    for name, path in paths.items():
        precisions = runtime_precisions(compiled[name])
        prec = ", ".join(f"{t}:{p}x{n}" for (t, p), n in sorted(precisions.items()))
        r = results[name]
        rows.append([path, f"{r['latency_ms']:.3f}", f"{r['throughput']:.1f}", prec])
    print(f"batch size {args.batch_size}, precision hint {args.precision}")
    print(format_table(["model", "latency ms (median)", "throughput /s", "runtime precision"], rows))
    if args.vs:
        ratio = results["vs"]["latency_ms"] / results["model"]["latency_ms"]
        print(f"speedup of {args.model} over {args.vs}: {ratio:.2f}x")
    return 0


def _cmd_demo(args):
    from keras_compress.demo import run_demo

    run_demo(output=args.output, epochs=args.epochs, verbose=1 if args.verbose else 0)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-compress",
        description="Training-time compression for Keras 3, exported to OpenVINO.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train, compress and export a digits CNN; print a table")
    p.add_argument("--output", default="keras_compress_demo", help="directory for the IRs")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: 8)")
    p.add_argument("--verbose", action="store_true", help="show Keras progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("convert", help="convert a TensorFlow SavedModel to OpenVINO IR")
    p.add_argument("saved_model", help="SavedModel directory")
    p.add_argument("-o", "--output", required=True, help="output .xml path")
    p.add_argument("--fp16", action="store_true", help="store float weights as fp16")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("validate", help="validate a config file and summarize it")
    p.add_argument("file")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("schema", help="print the config JSON Schema")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("benchmark", help="latency/throughput of an IR with OpenVINO")
    p.add_argument("model", help="IR .xml")
    p.add_argument("--vs", help="a second IR to compare against (interleaved runs)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--precision", choices=["f32", "default"], default="default")
    p.add_argument("--rounds", type=int, default=7)
    p.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv=None):
    """Entry point of the `keras-compress` console script."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logger = logging.getLogger("keras_compress")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
