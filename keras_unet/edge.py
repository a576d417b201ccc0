"""`python -m keras_unet.edge`: the command line lives in keras_unet.cli.edge."""

import sys

from keras_unet.cli.edge import main
from keras_unet.infer.edge import EdgeSegmenter, segment_files  # noqa: F401  (the LiteRT runner's public names)

if __name__ == "__main__":
    sys.exit(main())
