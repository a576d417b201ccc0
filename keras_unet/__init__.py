"""keras_unet: segment bones and other labelled structures in X-ray images with a Keras U-Net.

The few names a notebook needs, loaded on first use (so `import keras_unet.edge` still pulls in no TensorFlow):

    from keras_unet import Config, load_predictor, read_image, export_run

(The subpackages keras_unet.train and keras_unet.evaluate hold training and scoring: keras_unet.train.run.train,
keras_unet.evaluate.score.evaluate.)
"""

import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the console

__version__ = "0.1.0"

_PUBLIC = {  # name -> the module that defines it
    "Config": "keras_unet.config",
    "load_config": "keras_unet.config",
    "load_predictor": "keras_unet.infer.load",
    "Predictor": "keras_unet.infer.predictor",
    "read_image": "keras_unet.io.images",
    "export_run": "keras_unet.export.exporter",
    "ExportOptions": "keras_unet.export.exporter",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    """Import a public name's module the first time the name is used."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'keras_unet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
