"""Segment an image or a folder of images: masks per class, overlays and, optionally, Labelme files.

The command line lives in keras_unet.cli.predict; `python predict.py --help` lists the flags."""

import sys

from keras_unet.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
