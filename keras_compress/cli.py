"""The `keras-compress` command: demo, export, convert, validate, schema, configs, benchmark.

Fast and quiet by design:
- the console script starts in `keras_compress_launcher`, which imports this module with the
  package's light import (see `keras_compress/__init__.py`), so `--help`, `--version`, `schema`,
  `configs` and `validate` answer without loading TensorFlow or Keras, and `benchmark` loads only
  OpenVINO;
- the commands that need TensorFlow (`demo`, `export`, `convert`) import it here, on demand, through
  `_import_tensorflow`: after `TF_CPP_MIN_LOG_LEVEL` is set, with the native log lines that
  TensorFlow writes to the stderr file descriptor while it starts filtered out, and with absl's
  Python logging set to errors only;
- a bad argument or input is one line on stderr (`keras-compress <command>: error: ...`) and a
  non-zero exit, never a traceback.

This is the one module allowed to import the package's own modules inside functions (the
architecture test knows it): that is what keeps TensorFlow out of the light commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

__all__ = ["build_parser", "main"]

PROG = "keras-compress"

#: Lines TensorFlow's native code writes to stderr while it starts, whatever `TF_CPP_MIN_LOG_LEVEL`
#: says (absl logs them before its logging is initialized): info and warning lines in absl's format
#: (`I0000 00:00:1796017593.450960   31631 port.cc:153] ...`), absl's own notice, the continuation of
#: the CPU-feature notice, and the failed CUDA probe on a machine without a GPU. Other lines are kept.
_NATIVE_NOISE = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\]"
    r"|E\d{4} \d\d:\d\d:[\d.]+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)


class CommandError(Exception):
    """A problem with the command's arguments or inputs: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line: `<prog>: error: <message> (see <prog> --help)`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text):
    return _int_at_least(text, 1, "a positive integer")


def _non_negative_int(text):
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text, low, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}. Received: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}. Received: {value}")
    return value


def _one_line(text):
    """The informative line of a multi-line error (OpenVINO's start with C++ source locations)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    useful = [line for line in lines if not re.match(r"^(Exception from |Check '.*' failed at )", line)]
    return (useful or lines or [""])[-1]


# ----------------------------------------------------------------------------- quiet TensorFlow
def _import_tensorflow():
    """Imports TensorFlow and Keras with TensorFlow's start-up log lines filtered out of stderr.

    TensorFlow's native code writes them to file descriptor 2 directly, so `sys.stderr` cannot
    catch them: the descriptor is pointed at a temporary file while TensorFlow starts (the import
    and the first device listing, which probes CUDA), then restored, and every captured line that
    is not start-up noise (`_NATIVE_NOISE`) is written back to stderr.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
            import keras  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not _NATIVE_NOISE.match(line)]  # fmt: skip
            if kept:
                print("\n".join(kept), file=sys.stderr)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)


# ----------------------------------------------------------------------------- commands
def _cmd_schema(args):
    from keras_compress.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_configs(args):
    import warnings

    from keras_compress.config import list_configs, load_config

    for name in list_configs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = load_config(name)
        print(f"{name}: {' + '.join(config.algorithm_names())}")
    return 0


def _cmd_validate(args):
    import warnings

    from keras_compress.config import ConfigError, ConfigWarning, load_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        try:
            config = load_config(args.file)
        except ConfigError as err:
            if len(err.errors) == 1 and err.errors[0][0] == "$":  # the file itself: one line
                raise CommandError(err.errors[0][1]) from None
            print(f"{args.file}: invalid config\n{err}", file=sys.stderr)
            return 1
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(f"{args.file}: valid")
    print(config.summary())
    return 0


def _import_keras_compress(modules=()):
    """Imports Keras on the TensorFlow backend (unless Keras is already imported), every module of the
    package that registers serializable classes, and the user's `modules` (their custom classes)."""
    import importlib

    if "keras" not in sys.modules:
        # A .keras file is backend-independent: exporting it on TensorFlow needs no helper process.
        os.environ["KERAS_BACKEND"] = "tensorflow"
    _import_tensorflow()
    import keras_compress

    for module in sorted(set(keras_compress._PUBLIC.values())):
        importlib.import_module(module)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise CommandError(f"--import must name an importable module. Received: {module!r} ({err})") from None


def _cmd_export(args):
    source = Path(args.model)
    if source.suffix != ".keras" or not source.is_file():
        raise CommandError(f"MODEL must be a saved Keras model (a .keras file). Received: {str(source)!r}"
                           f"{'' if source.exists() else ' (nothing there)'}")  # fmt: skip
    _import_keras_compress(args.imports)
    import keras

    from keras_compress.export import export

    try:
        model = keras.saving.load_model(source, compile=False)
    except Exception as err:  # noqa: BLE001 - loading runs the model's own from_config
        raise CommandError(f"Could not load {str(source)!r}: {_one_line(err)} (a custom class needs "
                           "--import MODULE)") from None  # fmt: skip
    try:
        path = export(model, args.output, format=args.format, compress_to_fp16=args.fp16)
    except (ValueError, RuntimeError) as err:
        raise CommandError(f"Could not export {str(source)!r}: {_one_line(err.__cause__ or err)}") from None
    print(path)
    return 0


def _cmd_convert(args):
    source = Path(args.saved_model)
    if source.suffix == ".keras" and source.is_file():
        return _cmd_export(argparse.Namespace(model=source, output=args.output, format="openvino",
                                              fp16=args.fp16, imports=[]))  # fmt: skip
    if not (source / "saved_model.pb").is_file():
        raise CommandError(f"SAVED_MODEL must be a TensorFlow SavedModel directory (with saved_model.pb). "
                           f"Received: {str(source)!r}")  # fmt: skip
    _import_tensorflow()
    from keras_compress.export.openvino import convert_saved_model

    try:
        xml = convert_saved_model(source, args.output, compress_to_fp16=args.fp16)
    except RuntimeError as err:  # the converter process's answer, or its crash
        raise CommandError(f"OpenVINO could not convert {str(source)!r}: {_one_line(err.__cause__ or err)}") from None
    except (ValueError, OSError) as err:  # the target, refused before OpenVINO was asked anything
        raise CommandError(f"-o/--output: {_one_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - one line, never a traceback
        raise CommandError(f"could not convert {str(source)!r}: {_one_line(err)}") from None
    print(xml)
    return 0


def _check_ir(path):
    """Raises `CommandError` unless `path` is an OpenVINO IR `.xml` with its `.bin` next to it."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"MODEL must be an OpenVINO IR .xml file. Received: {str(path)!r} (no IR file there)")
    try:
        _, root = next(ElementTree.iterparse(path, events=("start",)))
    except (ElementTree.ParseError, StopIteration, OSError) as err:
        raise CommandError(f"{str(path)!r} is not an OpenVINO IR: not XML ({err})") from None
    if root.tag != "net":
        raise CommandError(f"{str(path)!r} is not an OpenVINO IR: its root element is <{root.tag}>, not <net>")
    if not path.with_suffix(".bin").is_file():
        raise CommandError(f"{str(path)!r} has no weights file next to it: {str(path.with_suffix('.bin'))!r}")


def _cmd_benchmark(args):
    from keras_compress.benchmark import benchmark_models, compile_ir, runtime_precisions
    from keras_compress.statistics import format_table

    paths = {"model": args.model}
    if args.vs:
        paths["vs"] = args.vs
    for path in paths.values():
        _check_ir(path)
    compiled = {}
    for name, path in paths.items():
        try:
            compiled[name] = compile_ir(path, args.precision)
        except Exception as err:  # noqa: BLE001 - OpenVINO raises several error types
            raise CommandError(f"OpenVINO could not read or compile {path!r}: {_one_line(err)}") from None
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
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CommandError(f"--output must be a directory. Received: {str(output)!r}, which is a file")
    _import_tensorflow()
    from keras_compress.demo import run_demo

    run_demo(output=output, epochs=args.epochs, verbose=1 if args.verbose else 0)
    return 0


# ----------------------------------------------------------------------------- parser
def _version():
    from keras_compress import __version__

    return __version__


def build_parser():
    """The `keras-compress` argument parser (building it imports nothing heavy)."""
    parser = _Parser(prog=PROG, description="Training-time compression for Keras 3, exported to OpenVINO.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}",
                        help="print the version of keras_compress and exit")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help):
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")

    p = command("demo", "train a digits CNN, prune and quantize it, export FP32 and INT8 IRs, print a table")
    p.add_argument("--output", default="keras_compress_demo", metavar="DIR",
                   help="directory for fp32.xml and int8.xml (default: %(default)s)")
    p.add_argument("--epochs", type=_non_negative_int, default=None, metavar="N",
                   help="fine-tuning epochs of the compressed model (default: 8)")
    p.add_argument("--verbose", action="store_true",
                   help="show Keras' progress bars (training, calibration); without it only the table is printed")
    p.set_defaults(func=_cmd_demo)

    p = command("export", "export a saved Keras model (.keras, trained on any backend) to an OpenVINO IR")
    p.add_argument("model", metavar="MODEL.keras", help="the saved model (compressed by keras_compress, or plain)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.xml",
                   help="the .xml to write (.bin next to it), or the SavedModel folder with --format saved_model")
    p.add_argument("--format", choices=["openvino", "saved_model"], default="openvino",
                   help="what to write (default: %(default)s)")
    p.add_argument("--fp16", action="store_true", help="store float weights as fp16 (half the size)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module to import before loading (one that defines the model's custom classes); repeatable")
    p.set_defaults(func=_cmd_export)

    p = command("convert", "convert a TensorFlow SavedModel (or a .keras file, as export does) to an OpenVINO IR")
    p.add_argument("saved_model", metavar="SAVED_MODEL", help="the SavedModel directory, or a .keras file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.xml", help="the .xml to write (.bin next to it)")
    p.add_argument("--fp16", action="store_true", help="store float weights as fp16 (half the size)")
    p.set_defaults(func=_cmd_convert)

    p = command("validate", "validate a config and print what it will do")
    p.add_argument("file", metavar="CONFIG",
                   help="a JSON config file, or the name of a packaged config (see 'keras-compress configs')")
    p.set_defaults(func=_cmd_validate)

    p = command("schema", "print the JSON Schema of a config")
    p.set_defaults(func=_cmd_schema)

    p = command("configs", "list the configs packaged with keras_compress (usable by name)")
    p.set_defaults(func=_cmd_configs)

    p = command("benchmark", "measure the latency and throughput of an IR with OpenVINO")
    p.add_argument("model", metavar="MODEL.xml", help="the IR to measure")
    p.add_argument("--vs", metavar="OTHER.xml", help="a second IR to compare against (interleaved runs)")
    p.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
                   help="batch size of the random inputs (default: %(default)s)")
    p.add_argument("--precision", choices=["f32", "default"], default="default",
                   help="OpenVINO inference precision hint: f32, or the CPU plugin's default "
                        "(bf16 on CPUs with AVX512-BF16) (default: %(default)s)")
    p.add_argument("--rounds", type=_positive_int, default=7, metavar="N",
                   help="interleaved rounds of 20 inferences per model (default: %(default)s)")
    p.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv=None):
    """Runs the `keras-compress` command; returns its exit status.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logger = logging.getLogger("keras_compress")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{PROG} {args.command}"
    try:
        return args.func(args)
    except CommandError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
    except OSError as err:  # a folder that cannot be written, a disk that is full, ...
        print(f"{prog}: error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
