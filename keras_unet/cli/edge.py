"""`python -m keras_unet.edge --model MODEL.tflite --input IMAGES --out OUT`: segment with LiteRT alone (no TensorFlow).

The model is a .tflite or an .onnx file of an export (ONNX Runtime for the latter, also without TensorFlow), or the
export folder; with the run's refine stage exported beside it, both stages run."""

from __future__ import annotations

import argparse

from keras_unet.cli.common import add_debug_option, run_main
from keras_unet.infer.edge import EdgeSegmenter, segment_files
from keras_unet.io.images import list_images


def parse_args(argv):
    """The parsed command line."""
    p = argparse.ArgumentParser(prog="python -m keras_unet.edge",
                                description="Segment X-ray images with an exported .tflite (LiteRT) or .onnx "
                                            "(ONNX Runtime) model, without TensorFlow.")
    p.add_argument("--model", dest="model_flag", help=".tflite or .onnx file with the export's metadata.json beside "
                                                      "it, or the export folder")
    p.add_argument("--input", nargs="+", default=[], help="image files or folders of them")
    p.add_argument("positional", nargs="*", metavar="MODEL IMAGE", help="the older form: the model, then image files")
    p.add_argument("--out", required=True, help="output folder: OUT/<class>/<image stem>.png (0/255)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for LiteRT / ONNX Runtime (default: the cores this process may use)")
    p.add_argument("--no-tta", action="store_true", help="skip the horizontal-flip test-time augmentation")
    p.add_argument("--no-refine", action="store_true", help="the first stage alone, without the refine stage")
    add_debug_option(p)
    args = p.parse_args(argv)
    rest = list(args.positional)
    args.model = args.model_flag or (rest.pop(0) if rest else None)
    args.images = [*args.input, *rest]
    if not args.model or not args.images:
        p.error("give the model and the images: --model MODEL.tflite --input IMAGE_OR_FOLDER ...")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    return args


def run(argv) -> int:
    """Segment the images; 1 when one was skipped."""
    args = parse_args(argv)
    segmenter = EdgeSegmenter(args.model, args.threads, refine=not args.no_refine)
    paths = [path for given in args.images for path in list_images(given)]
    return 1 if segment_files(segmenter, paths, args.out, False if args.no_tta else None) else 0


def main(argv=None) -> int:
    """The command line: exit code 0, 1 (an image skipped) or 2 (an error, one line on stderr)."""
    return run_main(run, argv)
