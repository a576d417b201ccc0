"""The run's shape prior (imaging.shape_prior), fitted on its training masks and written beside its model, with the
model's uncertainty on the validation images (the level at which predict.py's quality flags call a mask unsure)."""

from __future__ import annotations

import json
from pathlib import Path

from keras_unet.imaging.shape_prior import fit_prior, fit_uncertainty, mask_features
from keras_unet.infer.ranking import score_image
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


def add_uncertainty(out, predictor, samples) -> dict:
    """Add each class's uncertainty over the samples' images (infer.ranking) to RUN/shape_prior.json; returns it."""
    path = Path(out) / SHAPE_PRIOR_FILE
    prior = json.loads(path.read_text())
    scores = {name: [] for name in predictor.classes}
    for sample in samples:
        for name, value in score_image(predictor, images.read_image(sample.image_path)).items():
            scores[name].append(value)
    for name, figures in fit_uncertainty(scores).items():
        prior["classes"].setdefault(name, {})["uncertainty"] = figures
    write_json_atomic(path, prior)
    return prior
