"""`python -m keras_unet.masks --input DATA_DIR --classes a,b --out OUT`: write the masks a Labelme folder rasterises to."""

from __future__ import annotations

import argparse

from keras_unet.cli.common import add_debug_option, run_main
from keras_unet.config import Config
from keras_unet.data.masks import write_masks
from keras_unet.data.samples import resolve_classes


def parse_args(argv):
    """The parsed command line."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_unet.masks",
        description="Rasterise Labelme annotations into one 0/255 PNG mask per class and image.",
    )
    parser.add_argument("--input", "--data", dest="data_dir", help="folder of Labelme .json files (searched recursively)")
    parser.add_argument("positional_input", nargs="?", metavar="DATA_DIR", help="the same as --input (older form)")
    parser.add_argument("--classes", default="", help="comma-separated class names (default: labels.txt, "
                                                      "else every label found)")
    parser.add_argument("--out", required=True, help="output folder: OUT/<class>/<image stem>.png")
    parser.add_argument("--line-width", type=int, default=Config().line_width,
                        help="pixel width of line and linestrip shapes (default %(default)s)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unusable annotation files (listed in OUT/skipped.txt) instead of stopping")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or args.positional_input
    if not args.data_dir:
        parser.error("give the data folder: --input DIR")
    return args


def run(argv) -> int:
    """Write the masks as the parsed arguments say."""
    args = parse_args(argv)
    classes = resolve_classes(args.classes, args.data_dir)
    write_masks(args.data_dir, classes, args.out, args.line_width, skip_bad=args.skip_bad)
    return 0


def main(argv=None) -> int:
    """The command line: exit code 0, or 2 on an error (one line on stderr)."""
    return run_main(run, argv)
