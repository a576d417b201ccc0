"""Shared command-line plumbing: a quiet TensorFlow start-up, one-line errors for the project's own error types,
the inference options."""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings

from keras_unet.errors import KerasUnetError, first_line
from keras_unet.io.files import DiskFullError, is_disk_full
from keras_unet.infer.load import load_predictor
from keras_unet.infer.predictor import postprocess_settings


# what TensorFlow's C++ side (absl logging) writes to fd 2 while it loads, whatever TF_CPP_MIN_LOG_LEVEL says:
# `WARNING: All log messages before absl::InitializeLog() is called are written to STDERR` and
# `I0000 00:00:1796124649.366924   17383 cudart_stub.cc:31] Could not find cuda drivers ...` (I, W or E; F stays)
START_UP_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called|"
                            r"[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")


def run_main(main, argv=None) -> int:
    """Call main(argv); a KerasUnetError becomes `error: ...` on stderr and exit code 2 (traceback with --debug).

    Without --debug, TensorFlow starts quietly: TF_CPP_MIN_LOG_LEVEL 3 (unless set to something else than the
    package's default 2), its absl start-up lines dropped while `import tensorflow` runs (_QuietImport, quiet_fd2),
    and TensorFlow's and Keras's own Python warnings off; with --debug all of them show."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    with contextlib.ExitStack() as quiet:
        if not debug:
            quiet.enter_context(quiet_tensorflow())
        try:
            return main(args) or 0
        except KerasUnetError as exc:
            if debug:
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # a full disk met by a writer of a library (TensorBoard, h5py, a CSV logger)
            if debug or not is_disk_full(exc):
                raise
            print(f"error: {disk_full_message(exc, args)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


@contextlib.contextmanager
def quiet_tensorflow():
    """TensorFlow's start-up noise and its non-actionable Python warnings hidden while a command runs.

    Nothing is imported here: a command that never needs TensorFlow (edge, phantom) still loads none."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if level in (None, "2"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # the `failed call to cuInit ... (303)` error on a CPU machine
    finder = None
    if "tensorflow" not in sys.modules:
        finder = _QuietImport()
        sys.meta_path.insert(0, finder)
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for module in ("tensorflow", "keras", "absl", "google.protobuf"):
                warnings.filterwarnings("ignore", module=rf"{re.escape(module)}(\.|$)")  # not keras_unet
            yield
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for logger, logger_level in zip(loggers, levels):
            logger.setLevel(logger_level)
        if level is None:  # as it was (a TensorFlow imported meanwhile has read it already)
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        elif level == "2":
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = level


def disk_full_message(exc, args=()) -> str:
    """The one line for a 'no space left on device' raised outside the toolkit's own atomic writes: the file's folder
    when the error names it, else the command's --out folder."""
    error = exc
    while error is not None and not (isinstance(error, OSError) and error.filename):
        error = error.__cause__ or error.__context__
    if error is not None:
        return str(DiskFullError(error.filename))
    args = list(args)
    outs = [value.split("=", 1)[1] if value.startswith("--out=") else args[i + 1]
            for i, value in enumerate(args) if value.startswith("--out=") or (value == "--out" and i + 1 < len(args))]
    where = f"{outs[-1]}: " if outs else ""
    return (f"{where}no space left on the disk ({first_line(exc)}); free some space and run the same command again "
            "(finished files are kept as they were)")


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once and loads it with quiet_fd2 (its absl start-up lines dropped)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and so that the real finders answer
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader
        with quiet_fd2():
            self.loader.exec_module(module)


@contextlib.contextmanager
def quiet_fd2():
    """File descriptor 2 into a temporary file for the duration; afterwards every line of it but START_UP_NOISE goes
    to stderr (so a Python traceback or warning printed meanwhile still shows)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not START_UP_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def add_debug_option(parser) -> None:
    """--debug, which every command takes: full tracebacks instead of one-line errors, TensorFlow's start-up
    messages and warnings."""
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks, and TensorFlow's start-up messages and warnings")


def add_inference_options(parser) -> None:
    """--model, --no-postprocess, --no-tta, --tta-shift, --tta-scales, --threshold and --no-refine, shared by
    evaluate.py and predict.py."""
    parser.add_argument("--model", required=True,
                        help="model.keras (or its run folder), a SavedModel folder, a .tflite or an .onnx file")
    parser.add_argument("--no-postprocess", action="store_true", help="threshold only: no small-component "
                        "removal, largest-component selection or hole filling")
    parser.add_argument("--no-tta", action="store_true", help="no test-time augmentation (flip, shifts, zooms)")
    parser.add_argument("--tta-shift", type=float, metavar="F",
                        help="also average views moved by F of the network input up, down, left and right "
                             "(default: the run's postprocess.tta_shift; 0: none)")
    parser.add_argument("--tta-scales", type=_factors, metavar="A,B",
                        help="also average views zoomed by these factors, e.g. 0.9,1.1 (default: the run's "
                             "postprocess.tta_scales; 'none': no zoomed views)")
    parser.add_argument("--threshold", type=float, help="probability threshold for every class (default: the run's)")
    parser.add_argument("--no-refine", action="store_true", help="leave out the run's refine stage (refine/ folder)")


def _factors(text: str) -> list:
    if text.strip().lower() == "none":
        return []
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.9,1.1, got {text!r}") from None


def load_for_inference(args):
    """(predictor, post-processing settings) for parsed inference options."""
    predictor = load_predictor(args.model, refine=not args.no_refine)
    settings = postprocess_settings(predictor.config.postprocess, enabled=not args.no_postprocess,
                                    tta=not args.no_tta, threshold=args.threshold, tta_shift=args.tta_shift,
                                    tta_scales=args.tta_scales)
    return predictor, settings
