"""The post-processing a run gets by default: per class from the components of its training masks
(imaging.postprocess.choose_cleanup), unless postprocess.auto is off."""

from __future__ import annotations

import dataclasses

from keras_unet.config import Config
from keras_unet.data.samples import load_samples
from keras_unet.imaging.postprocess import auto_postprocess, choose_cleanup, mask_structure
from keras_unet.io import images


def mask_structures(samples, classes) -> dict:
    """{class: [(components, has hole) of each sample's mask]}, read from the samples' mask files."""
    found = {name: [] for name in classes}
    for sample in samples:
        for name, path in zip(classes, sample.mask_paths):
            found[name].append(mask_structure(images.read_image(path)))
    return found


def describe(name: str, structures) -> str:
    """One class's automatic choice in words, for the training log."""
    c = choose_cleanup(structures)
    if c["keep_largest"] is not None:
        return f"{name}: keep largest {c['keep_largest']}, fill holes"
    present = [hole for n, hole in structures if n > 0]
    return f"{name}: as predicted (up to {c['parts']} parts, {sum(present)} of {len(present)} masks with holes)"


def resolve_postprocess(config: Config, log=print, train=None) -> Config:
    """The config with postprocess.keep_largest and fill_holes chosen from the training masks where the user set
    none (see auto_postprocess); unchanged when postprocess.auto is off or the model is on crops.

    train: the training samples when the caller has them already (else they are read)."""
    if not config.postprocess.auto or config.crops.classes:
        return config
    if train is None:
        train, _ = load_samples(config, log=lambda *args, **kwargs: None, bad=[])
    structures = mask_structures(train, config.classes)
    log("post-processing from the training masks: " + "; ".join(describe(n, s) for n, s in structures.items()))
    return dataclasses.replace(config, postprocess=auto_postprocess(config.postprocess, structures))
