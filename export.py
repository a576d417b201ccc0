"""Export a trained run's model.keras to SavedModel, TFLite (float32, float16, int8) and ONNX, checked against Keras.

The command line lives in keras_unet.cli.export; `python export.py --help` lists the flags."""

import sys

from keras_unet.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
