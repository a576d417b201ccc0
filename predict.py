"""Segment an image or a folder of images: masks per class, overlays and, optionally, Labelme files."""

from __future__ import annotations

import argparse
import sys

from keras_unet.cli import run_main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True,
                   help="model.keras (or its run folder), a SavedModel folder, a .tflite or an .onnx file")
    p.add_argument("--input", required=True, help="an image file, or a folder of them")
    p.add_argument("--out", required=True, help="output folder: <class>/<stem>.png, overlays/<stem>.png")
    p.add_argument("--labelme", action="store_true", help="also write <stem>.json Labelme files of the polygons")
    p.add_argument("--no-postprocess", action="store_true", help="threshold only: no small-component removal, "
                                                                  "largest-component selection or hole filling")
    p.add_argument("--no-tta", action="store_true", help="no horizontal-flip test-time augmentation")
    p.add_argument("--threshold", type=float, help="probability threshold for every class (default: the run's)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from keras_unet.inference import load_predictor, postprocess_settings, predict_folder

    predictor = load_predictor(args.model)
    settings = postprocess_settings(predictor.config.postprocess, enabled=not args.no_postprocess,
                                    tta=not args.no_tta, threshold=args.threshold)
    result = predict_folder(predictor, args.input, args.out, settings, labelme=args.labelme,
                            overwrite=args.overwrite)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
