"""Export a trained run's model.keras to SavedModel, TFLite (float32, float16, int8) and ONNX, checked against Keras."""

from __future__ import annotations

import argparse
import sys

from keras_unet.cli.common import run_main


def parse_args(argv):
    """The parsed command line."""
    p = argparse.ArgumentParser(prog="export.py", description=__doc__)
    p.add_argument("--model", required=True, help="the run's model.keras (config.json and split.json beside it)")
    p.add_argument("--out", required=True, help="export folder (created; refused if it exists unless --overwrite)")
    p.add_argument("--formats", default="",
                   help="comma-separated: saved_model,tflite,tflite_fp16,tflite_int8,onnx (default: all)")
    p.add_argument("--calibration", help="folder of images (or a Labelme / image + masks/ folder) for int8 "
                                         "calibration (default: the run's training images); also used for parity "
                                         "when the run's data is not readable")
    p.add_argument("--calibration-images", type=int, default=200, help="at most this many calibration images")
    p.add_argument("--parity-images", type=int, default=50, help="at most this many validation images for parity")
    p.add_argument("--int8-dice", type=float, default=0.98, help="least Dice vs Keras for the int8 model")
    p.add_argument("--float-dice", type=float, default=0.999, help="least Dice vs Keras for float artefacts")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def run(argv) -> int:
    """Export as the parsed arguments say; 1 when an artefact failed its parity gate."""
    args = parse_args(argv)
    # TensorFlow (heavy) is imported once the arguments are good
    from keras_unet.export.exporter import ExportOptions, export_run, format_table, parity_failures, parse_formats

    options = ExportOptions(formats=parse_formats(args.formats), calibration=args.calibration,
                            calibration_images=args.calibration_images, parity_images=args.parity_images,
                            int8_dice=args.int8_dice, float_dice=args.float_dice, overwrite=args.overwrite).validate()
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
