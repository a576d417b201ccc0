"""`python -m keras_unet.edge MODEL.tflite IMAGE ... --out OUT`: segment images with LiteRT alone (no TensorFlow)."""

from __future__ import annotations

import argparse

from keras_unet.cli.common import add_debug_option, run_main
from keras_unet.infer.edge import EdgeSegmenter, segment_files


def parse_args(argv):
    """The parsed command line."""
    p = argparse.ArgumentParser(prog="python -m keras_unet.edge",
                                description="Segment X-ray images with an exported .tflite model (LiteRT, no TensorFlow).")
    p.add_argument("model", help=".tflite file with the export's metadata.json beside it")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder: OUT/<class>/<image stem>.png (0/255)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for LiteRT (default: all cores)")
    p.add_argument("--no-tta", action="store_true", help="skip the horizontal-flip test-time augmentation")
    add_debug_option(p)
    return p.parse_args(argv)


def run(argv) -> int:
    """Segment the images; 1 when one was skipped."""
    args = parse_args(argv)
    segmenter = EdgeSegmenter(args.model, args.threads)
    return 1 if segment_files(segmenter, args.images, args.out, False if args.no_tta else None) else 0


def main(argv=None) -> int:
    """The command line: exit code 0, 1 (an image skipped) or 2 (an error, one line on stderr)."""
    return run_main(run, argv)
