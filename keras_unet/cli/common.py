"""Shared command-line plumbing: one-line errors for the project's own error types, the inference options."""

from __future__ import annotations

import sys

from keras_unet.errors import KerasUnetError
from keras_unet.infer.load import load_predictor
from keras_unet.infer.predictor import postprocess_settings


def run_main(main, argv=None) -> int:
    """Call main(argv); a KerasUnetError becomes `error: ...` on stderr and exit code 2 (traceback with --debug)."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        return main(args) or 0
    except KerasUnetError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_debug_option(parser) -> None:
    """--debug, which every command takes: full tracebacks instead of one-line errors."""
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def add_inference_options(parser) -> None:
    """--model, --no-postprocess, --no-tta, --threshold and --no-refine, shared by evaluate.py and predict.py."""
    parser.add_argument("--model", required=True,
                        help="model.keras (or its run folder), a SavedModel folder, a .tflite or an .onnx file")
    parser.add_argument("--no-postprocess", action="store_true", help="threshold only: no small-component "
                        "removal, largest-component selection or hole filling")
    parser.add_argument("--no-tta", action="store_true", help="no horizontal-flip test-time augmentation")
    parser.add_argument("--threshold", type=float, help="probability threshold for every class (default: the run's)")
    parser.add_argument("--no-refine", action="store_true", help="leave out the run's refine stage (refine/ folder)")


def load_for_inference(args):
    """(predictor, post-processing settings) for parsed inference options."""
    predictor = load_predictor(args.model, refine=not args.no_refine)
    settings = postprocess_settings(predictor.config.postprocess, enabled=not args.no_postprocess,
                                    tta=not args.no_tta, threshold=args.threshold)
    return predictor, settings
