"""keras_unet: segment bones and other labelled structures in X-ray images with a Keras U-Net."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the console

__version__ = "0.1.0"
