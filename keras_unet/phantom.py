"""`python -m keras_unet.phantom`: the command line lives in keras_unet.cli.phantom."""

import sys

from keras_unet.cli.phantom import main

if __name__ == "__main__":
    sys.exit(main())
