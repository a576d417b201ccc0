"""Score a trained model against ground truth (Labelme or image + mask folder) and write a report folder."""

from __future__ import annotations

import argparse

from keras_unet.cli.common import add_debug_option, add_inference_options, load_for_inference, run_main
from keras_unet.evaluate.score import SPLITS, evaluate, parse_spacing


def parse_args(argv):
    """The parsed command line."""
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__)
    add_inference_options(p)
    p.add_argument("--input", "--data", dest="data", required=True,
                   help="Labelme folder, or images with masks/<class>/<stem>.png (--data is the same flag)")
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument("--spacing", help="pixel spacing in mm, 'S' or 'ROW,COL': adds HD95 and ASSD in mm "
                                     "(default: each DICOM image's own PixelSpacing; this overrides it)")
    p.add_argument("--sweep", action="store_true", help="also report mean Dice per class at thresholds 0.1..0.9")
    p.add_argument("--classes", help="comma-separated subset of the model's classes to score (default: all)")
    p.add_argument("--errors", action="store_true", help="overlays colour each class's true positives, false "
                                                          "positives and false negatives instead of the plain fill")
    p.add_argument("--split", choices=SPLITS, default="all",
                   help="val: score only the run's validation images (split.json beside the model); default all")
    p.add_argument("--overwrite", action="store_true", help="replace the report files in an existing --out")
    add_debug_option(p)
    return p.parse_args(argv)


def run(argv) -> int:
    """Score the model as the parsed arguments say."""
    args = parse_args(argv)

    spacing = parse_spacing(args.spacing)
    predictor, settings = load_for_inference(args)
    evaluate(predictor, args.data, args.out, settings, spacing=spacing, sweep=args.sweep, classes=args.classes,
             overwrite=args.overwrite, errors=args.errors, split=args.split)
    return 0


def main(argv=None) -> int:
    """The command line: exit code 0, or 2 on an error (one line on stderr)."""
    return run_main(run, argv)
