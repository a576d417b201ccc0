"""Train a U-Net on a Labelme folder (default: the bundled synthetic sample).

The command line lives in keras_unet.cli.train; `python train.py --help` lists the flags."""

import sys

from keras_unet.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
