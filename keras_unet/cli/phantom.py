"""`python -m keras_unet.phantom --out DIR`: write the synthetic sample data set (radiographs + Labelme polygons)."""

from __future__ import annotations

import argparse

from keras_unet.cli.common import add_debug_option, run_main
from keras_unet.config import DEFAULT_DATA_DIR
from keras_unet.data.phantom import write_sample


def parse_args(argv):
    """The parsed command line."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_unet.phantom",
        description="Write synthetic chest radiographs with Labelme rib and clavicle polygons.",
    )
    parser.add_argument("--out", default=DEFAULT_DATA_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--count", type=int, default=40, help="number of images (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="write even if the folder holds other files")
    add_debug_option(parser)
    return parser.parse_args(argv)


def run(argv) -> int:
    """Write the sample as the parsed arguments say."""
    args = parse_args(argv)
    paths = write_sample(args.out, args.count, args.size, args.seed, overwrite=args.overwrite)
    print(f"wrote {len(paths)} phantom images ({args.size}x{args.size}) with Labelme JSON to {args.out}")
    return 0


def main(argv=None) -> int:
    """The command line: exit code 0, or 2 on an error (one line on stderr)."""
    return run_main(run, argv)
