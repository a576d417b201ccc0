"""Train a U-Net on a Labelme folder (default: the bundled synthetic sample)."""

from __future__ import annotations

import argparse
import sys

from keras_unet.cli import run_main
from keras_unet.config import LOSSES, PRECISIONS, Config, load_config, merge


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", help="YAML or JSON file of settings; flags given here win over it")
    p.add_argument("--data", help="Labelme folder (or train/ and val/ subfolders); default data/sample")
    p.add_argument("--classes", help="comma-separated class names; default: labels.txt in --data, else all labels")
    p.add_argument("--image-size", type=int, help="side of the square network input in pixels (default 128)")
    p.add_argument("--batch-size", type=int, help="global batch size, over all devices (default 8)")
    p.add_argument("--epochs", type=int, help="number of epochs (default 40)")
    p.add_argument("--learning-rate", type=float, help="initial learning rate, cosine-decayed (default 2e-3)")
    p.add_argument("--loss", choices=LOSSES, help="training loss (default bce_dice)")
    p.add_argument("--out", help="run directory (default runs/unet)")
    p.add_argument("--seed", type=int, help="random seed for the split, initialisation and augmentation (default 0)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="auto (default): mixed_float16 with a GPU, float32 without")
    p.add_argument("--val-fraction", type=float, help="share of images held back for validation (default 0.2)")
    p.add_argument("--depth", type=int, help="U-Net levels (default 4)")
    p.add_argument("--base-filters", type=int, help="filters of the first level, doubled per level (default 12)")
    p.add_argument("--dropout", type=float, help="spatial dropout at the bottleneck (default 0)")
    p.add_argument("--upsampling", choices=("transpose", "bilinear"), help="decoder upsampling (default transpose)")
    p.add_argument("--checkpoint", choices=["best", "last"],
                   help="model kept: the epoch with the best validation Dice (default) or the last epoch")
    p.add_argument("--early-stopping", type=int, help="patience in epochs on validation Dice; 0 = off (default 15)")
    p.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    p.add_argument("--cache-dir", help="where generated masks are cached (default ~/.cache/keras_unet)")
    p.add_argument("--skip-bad", action="store_true",
                   help="train on the usable annotation files; list the others in RUN/skipped.txt")
    p.add_argument("--init-weights", metavar="PATH",
                   help="start from an earlier model.keras, run folder or RUN/pretrain/body.weights.npz "
                        "(layers whose name and weight shapes match)")
    p.add_argument("--pretrain", metavar="DIR",
                   help="first pretrain the U-Net on the images in DIR (unlabelled; inpainting), then train from it")
    p.add_argument("--pretrain-epochs", type=int, help="epochs of --pretrain (default 8)")
    p.add_argument("--self-train", metavar="DIR",
                   help="self-training: train a teacher, label the images in DIR (unlabelled) with it, then train "
                        "the run's model on both")
    p.add_argument("--self-train-epochs", type=int,
                   help="epochs of the self-trained model over labelled + pseudo-labelled images (default 60)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = load_config(args.config) if args.config else Config()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    config = merge(config, {
        "data": args.data, "classes": classes, "image_size": args.image_size, "batch_size": args.batch_size,
        "epochs": args.epochs, "learning_rate": args.learning_rate, "loss": args.loss, "out": args.out,
        "seed": args.seed, "precision": args.precision, "val_fraction": args.val_fraction,
        "model.depth": args.depth, "model.base_filters": args.base_filters, "model.dropout": args.dropout,
        "model.upsampling": args.upsampling, "early_stopping": args.early_stopping,
        "checkpoint": args.checkpoint,
        "augment.enabled": False if args.no_augment else None, "cache_dir": args.cache_dir,
        "skip_bad": True if args.skip_bad else None, "init_weights": args.init_weights,
        "pretrain_data": args.pretrain, "pretrain.epochs": args.pretrain_epochs,
        "self_train.data": args.self_train, "self_train.epochs": args.self_train_epochs,
    })
    from keras_unet.training import train  # imported late: TensorFlow start-up only once arguments are good

    train(config, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
