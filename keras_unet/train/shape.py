"""The run's shape prior (imaging.shape_prior), fitted on its training masks and written beside its model."""

from __future__ import annotations

from pathlib import Path

from keras_unet.imaging.shape_prior import fit_prior, mask_features
from keras_unet.io import images
from keras_unet.io.files import write_json_atomic
from keras_unet.run_folder import SHAPE_PRIOR_FILE


def shape_prior(samples, classes) -> dict:
    """The shape prior of the samples' mask files, per class."""
    found = {name: [] for name in classes}
    for sample in samples:
        for name, path in zip(classes, sample.mask_paths):
            found[name].append(mask_features(images.read_image(path)))
    return fit_prior(found)


def write_shape_prior(out, samples, classes) -> Path:
    """Write RUN/shape_prior.json of the training samples; returns its path."""
    path = Path(out) / SHAPE_PRIOR_FILE
    write_json_atomic(path, shape_prior(samples, classes))
    return path
