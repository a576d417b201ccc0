"""Score a trained model against ground truth (Labelme or image + mask folder) and write a report folder.

The command line lives in keras_unet.cli.evaluate; `python evaluate.py --help` lists the flags."""

import sys

from keras_unet.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
