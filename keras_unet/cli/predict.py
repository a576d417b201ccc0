"""Segment an image or a folder of images: masks per class, overlays, a quality flag per mask (OUT/flags.csv)
and, optionally, Labelme files.

With --rank: rank the folder's unannotated images by how unsure the model is (OUT/ranking.csv) and write Labelme
pre-annotations of the --top most uncertain ones, to annotate next.
"""

from __future__ import annotations

import argparse

from keras_unet.cli.common import add_debug_option, add_inference_options, load_for_inference, run_main
from keras_unet.infer.flags import FlagRecorder
from keras_unet.infer.predict import predict_folder
from keras_unet.infer.predictor import select_classes
from keras_unet.infer.ranking import DEFAULT_TOP, rank_folder


def parse_args(argv):
    """The parsed command line."""
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__)
    add_inference_options(p)
    p.add_argument("--input", required=True, help="an image file, or a folder of them")
    p.add_argument("--out", required=True, help="output folder: <class>/<stem>.png, overlays/<stem>.png")
    p.add_argument("--classes", help="comma-separated subset of the model's classes to write (default: all)")
    p.add_argument("--labelme", action="store_true", help="also write <stem>.json Labelme files of the polygons")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out")
    p.add_argument("--rank", action="store_true", help="instead of segmenting every image: rank the images without "
                   "a Labelme JSON beside them, most uncertain first (OUT/ranking.csv), and write pre-annotations "
                   "(OUT/<stem>.json) of the --top ones")
    p.add_argument("--top", type=int, help="with --rank: how many images get pre-annotations and are printed "
                   "(default 10)")
    p.add_argument("--runner", default="local", help="local (default: this process), beam (an Apache Beam pipeline "
                   "on Beam's DirectRunner) or a Beam runner's name (DataflowRunner, FlinkRunner, ...); with Beam, "
                   "--input may also be a glob or a .txt list of paths, and unknown flags are Beam pipeline options")
    add_debug_option(p)
    args, args.pipeline_args = p.parse_known_args(argv)
    if args.runner != "local" and args.runner != "beam" and not args.runner.endswith("Runner"):
        p.error(f"--runner must be local, beam or a Beam runner's name (DirectRunner, DataflowRunner, ...), "
                f"got {args.runner!r}")
    if args.pipeline_args and args.runner == "local":
        p.error(f"unrecognized arguments: {' '.join(args.pipeline_args)}")
    if args.rank and args.runner != "local":
        p.error("--rank runs locally; with --runner beam, figures.csv holds every image's uncertainty (sort it)")
    if args.top is not None and not args.rank:
        p.error("--top needs --rank")
    if args.top is not None and args.top < 0:
        p.error(f"--top must be 0 or more, got {args.top}")
    return args


def run(argv) -> int:
    """Segment or rank as the parsed arguments say; 1 when an image was skipped."""
    args = parse_args(argv)
    if args.runner != "local":
        from keras_unet.infer.beam import require_beam

        require_beam()  # one line when the extra is missing, before the model loads
    predictor, settings = load_for_inference(args)
    if args.runner != "local":
        from keras_unet.infer.beam import predict_beam

        select_classes(predictor, args.classes)  # an unknown class stops before the pipeline starts
        result = predict_beam(args.model, args.input, args.out, settings, args.pipeline_args,
                              refine=not args.no_refine, labelme=args.labelme, classes=args.classes,
                              overwrite=args.overwrite, runner=None if args.runner == "beam" else args.runner)
    elif args.rank:
        top = DEFAULT_TOP if args.top is None else args.top
        result = rank_folder(predictor, args.input, args.out, settings, top=top, overwrite=args.overwrite)
    else:
        flags = FlagRecorder(predictor, settings.tta)
        result = predict_folder(predictor, args.input, args.out, settings, labelme=args.labelme,
                                overwrite=args.overwrite, classes=args.classes, on_image=flags)
        flags.write(args.out)  # OUT/flags.csv: the masks to check first
    return 1 if result["failed"] else 0


def main(argv=None) -> int:
    """The command line: exit code 0, 1 (an image skipped) or 2 (an error, one line on stderr)."""
    return run_main(run, argv)
