"""`python -m keras_unet.masks`: the command line lives in keras_unet.cli.masks."""

import sys

from keras_unet.cli.masks import main

if __name__ == "__main__":
    sys.exit(main())
