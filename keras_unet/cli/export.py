"""Export a trained run's model.keras (and its refine stage) to SavedModel, TFLite (float32, float16, int8) and ONNX
(float32, int8), each checked against Keras."""

from __future__ import annotations

import argparse
import sys

from keras_unet.cli.common import add_debug_option, run_main
from keras_unet.export.options import DEFAULT_FORMATS, FORMATS, ExportOptions, parse_formats


# flag -> (ExportOptions field, type, help); the defaults shown are ExportOptions' own
LIMITS = {
    "--calibration-images": ("calibration_images", int, "at most this many calibration images"),
    "--parity-images": ("parity_images", int, "at most this many validation images for parity"),
    "--int8-dice": ("int8_dice", float, "least Dice vs Keras for the int8 model"),
    "--float-dice": ("float_dice", float, "least Dice vs Keras for float artefacts"),
}


def parse_args(argv):
    """The parsed command line."""
    p = argparse.ArgumentParser(prog="export.py", description=__doc__)
    p.add_argument("--model", required=True, help="the run's model.keras (config.json and split.json beside it)")
    p.add_argument("--out", required=True, help="export folder (created; refused if it exists unless --overwrite)")
    p.add_argument("--formats", default="", help=f"comma-separated: {','.join(FORMATS)} "
                                                 f"(default: {','.join(DEFAULT_FORMATS)})")
    p.add_argument("--calibration", help="folder of images (or a Labelme / image + masks/ folder) for int8 "
                                         "calibration (default: the run's training images); also used for parity "
                                         "when the run's data is not readable")
    defaults = ExportOptions()
    for flag, (field, kind, text) in LIMITS.items():
        p.add_argument(flag, type=kind, default=getattr(defaults, field), dest=field, help=f"{text} (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.add_argument("--no-refine", action="store_true", help="export the first stage alone when the run has a "
                                                             "refine stage (default: both, in every format)")
    add_debug_option(p)
    return p.parse_args(argv)


def run(argv) -> int:
    """Export as the parsed arguments say; 1 when an artefact failed its parity gate."""
    args = parse_args(argv)
    # TensorFlow (heavy) is imported once the arguments are good
    from keras_unet.export.exporter import export_run, format_table, parity_failures

    options = ExportOptions(formats=parse_formats(args.formats), calibration=args.calibration,
                            calibration_images=args.calibration_images, parity_images=args.parity_images,
                            int8_dice=args.int8_dice, float_dice=args.float_dice, overwrite=args.overwrite,
                            refine=not args.no_refine).validate()
    metadata = export_run(args.model, args.out, options)
    print(format_table(metadata))
    failures = parity_failures(metadata)
    for line in failures:
        print(f"PARITY FAILED: {line}", file=sys.stderr)
    print(f"written: {args.out}" + (" (parity_passed: false in metadata.json)" if failures else ""))
    return 1 if failures else 0


def main(argv=None) -> int:
    """The command line: exit code 0, 1 (parity failed) or 2 (an error, one line on stderr)."""
    return run_main(run, argv)
