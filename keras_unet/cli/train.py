"""Train a U-Net on a Labelme folder (default: the bundled synthetic sample)."""

from __future__ import annotations

import argparse

from keras_unet.cli.common import add_debug_option, run_main
from keras_unet.config import LOSSES, PRECISIONS, UPSAMPLING, Config, load_config, merge

DEFAULTS = Config()

# flag, the setting it overrides, its type, help; the help's default is read from Config, never written twice
SETTINGS_TABLE = """
--input             data                str    Labelme folder (or train/ and val/ subfolders); --data is the same
--image-size        image_size          int    side of the square network input in pixels
--batch-size        batch_size          int    global batch size, over all devices
--epochs            epochs              int    number of epochs
--learning-rate     learning_rate       float  initial learning rate, cosine-decayed
--loss              loss                str    training loss
--out               out                 str    run directory
--seed              seed                int    random seed for the split, initialisation and augmentation
--precision         precision           str    auto: mixed_float16 on a GPU, mixed_bfloat16 on a bf16 CPU, else float32
--val-fraction      val_fraction        float  share of images held back for validation
--line-width        line_width          int    pixel width of line and linestrip shapes
--depth             model.depth         int    U-Net levels
--base-filters      model.base_filters  int    filters of the first level, doubled per level
--dropout           model.dropout       float  spatial dropout at the bottleneck
--upsampling        model.upsampling    str    decoder upsampling
--checkpoint        checkpoint          str    model kept: the epoch with the best validation Dice, or the last epoch
--early-stopping    early_stopping      int    patience in epochs on validation Dice; 0 = off
--cache-dir         cache_dir           str    where generated masks are cached (empty: ~/.cache/keras_unet)
--init-weights      init_weights        str    start from a model.keras, run folder or RUN/pretrain/body.weights.npz (matching layers)
--pretrain          pretrain_data       str    first pretrain on the unlabelled images in this folder (inpainting)
--pretrain-epochs   pretrain.epochs     int    epochs of --pretrain
--self-train        self_train.data     str    self-training: a teacher labels these unlabelled images, then train on both
--self-train-epochs self_train.epochs   int    epochs of the self-trained model over labelled + pseudo-labelled images
"""
TYPES = {"str": str, "int": int, "float": float}
SETTINGS = {flag: (key, TYPES[kind], text) for flag, key, kind, text in
            (line.split(maxsplit=3) for line in SETTINGS_TABLE.strip().splitlines())}
ALIASES = {"--input": ("--data",)}  # one name for a command's input in every command; older names still work
CHOICES = {"--loss": LOSSES, "--precision": PRECISIONS, "--upsampling": UPSAMPLING, "--checkpoint": ("best", "last")}


def default_of(key: str):
    """The default value of a dotted setting ('model.depth')."""
    value = DEFAULTS
    for part in key.split("."):
        value = getattr(value, part)
    return value


def parse_args(argv):
    """The parsed command line."""
    p = argparse.ArgumentParser(prog="train.py", description=__doc__)
    p.add_argument("--config", help="YAML or JSON file of settings; flags given here win over it")
    p.add_argument("--classes", help="comma-separated class names; default: labels.txt in --data, else all labels")
    for flag, (key, kind, text) in SETTINGS.items():
        default = default_of(key)
        shown = f" (default {default})" if default not in ("", None) else ""
        p.add_argument(flag, *ALIASES.get(flag, ()), type=kind, choices=CHOICES.get(flag), dest=key.replace(".", "__"),
                       help=text + shown,
                       metavar=None if flag in CHOICES else key.split(".")[-1].upper())
    p.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    p.add_argument("--skip-bad", action="store_true",
                   help="train on the usable annotation files; list the others in RUN/skipped.txt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    add_debug_option(p)
    return p.parse_args(argv)


def config_from_args(args) -> Config:
    """The run's Config: defaults, then --config's file, then the flags given."""
    config = load_config(args.config) if args.config else Config()
    overrides = {key: getattr(args, key.replace(".", "__")) for key, _, _ in SETTINGS.values()}
    overrides.update({
        "classes": [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        "augment.enabled": False if args.no_augment else None,
        "skip_bad": True if args.skip_bad else None,
    })
    return merge(config, overrides)


def run(argv) -> int:
    """Train as the parsed arguments say."""
    args = parse_args(argv)
    config = config_from_args(args)
    from keras_unet.train.run import train  # TensorFlow (heavy) is imported once the arguments are good

    train(config, overwrite=args.overwrite)
    return 0


def main(argv=None) -> int:
    """The command line: exit code 0, or 2 on an error (one line on stderr)."""
    return run_main(run, argv)
