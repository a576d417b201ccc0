"""Segment an image or a folder of images: masks per class, overlays and, optionally, Labelme files."""

from __future__ import annotations

import argparse
import sys

from keras_unet.cli import add_inference_options, load_for_inference, run_main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    add_inference_options(p)
    p.add_argument("--input", required=True, help="an image file, or a folder of them")
    p.add_argument("--out", required=True, help="output folder: <class>/<stem>.png, overlays/<stem>.png")
    p.add_argument("--labelme", action="store_true", help="also write <stem>.json Labelme files of the polygons")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from keras_unet.inference import predict_folder

    predictor, settings = load_for_inference(args)
    result = predict_folder(predictor, args.input, args.out, settings, labelme=args.labelme,
                            overwrite=args.overwrite)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
