"""keras_unet: segment bones and other labelled structures in X-ray images with a Keras U-Net.

The few names a notebook needs, loaded on first use (so `import keras_unet.edge` still pulls in no TensorFlow):

    from keras_unet import train_model, load_predictor, read_image, evaluate_model, export_model, Config
"""

import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the console

__version__ = "0.1.0"

_PUBLIC = {  # name -> the module that defines it
    "train_model": "keras_unet.api",
    "evaluate_model": "keras_unet.api",
    "export_model": "keras_unet.api",
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
