"""`keras-unet COMMAND ...`: one installed command for every tool (train, evaluate, predict, export, masks, edge,
phantom, serve); each subcommand takes the same flags as its script."""

from __future__ import annotations

import importlib
import sys

from keras_unet import __version__

COMMANDS = {
    "train": "train a U-Net on a Labelme folder (default: the bundled sample)",
    "evaluate": "score a model against ground truth and write a report folder",
    "predict": "segment images (masks, overlays, Labelme pre-annotations; --rank to choose what to annotate)",
    "export": "export a run to SavedModel, TFLite and ONNX, each checked against Keras",
    "masks": "write the masks a Labelme folder rasterises to",
    "edge": "segment images with an exported .tflite model and LiteRT alone",
    "phantom": "write a synthetic sample data set",
    "serve": "serve a model to annotation tools (X-AnyLabeling) over HTTP; needs the serve extra",
}


def usage() -> str:
    """The top-level help text."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: keras-unet COMMAND [--help] ...   (keras_unet {__version__})", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "keras-unet COMMAND --help lists a command's flags; keras-unet --version prints the version."]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run one subcommand; its exit code (2 for an unknown one)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"keras-unet {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"keras_unet.cli.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
