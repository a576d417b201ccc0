"""The post-processing and refine crops a run gets by default: per class from the components of its training masks
(imaging.postprocess.choose_cleanup), unless postprocess.auto is off (refine.components set)."""

from __future__ import annotations

import dataclasses

from keras_unet.config import Config
from keras_unet.data.samples import load_samples
from keras_unet.imaging.postprocess import auto_postprocess, auto_refine, choose_cleanup, mask_structure
from keras_unet.io import images


def mask_structures(samples, classes) -> dict:
    """{class: [(components, has hole, smallest area) of each sample's mask]}, read from the samples' mask files."""
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
    present = [s[1] for s in structures if s[0] > 0]
    return (f"{name}: as predicted (up to {c['parts']} parts, {sum(present)} of {len(present)} masks with holes), "
            f"components under {c['min_area'] or 0} px dropped")


REFINE_WORDS = {"largest": "a crop around the largest part", "components": "a crop per component",
                "skip": "not refined"}


def resolve_postprocess(config: Config, log=print, train=None) -> Config:
    """The config with postprocess.keep_largest, fill_holes and min_areas chosen from the training masks where the
    user set none (see auto_postprocess), and refine.classes and components where components is "auto"
    (auto_refine); the post-processing is left unchanged when postprocess.auto is off or the model is on crops.

    train: the training samples when the caller has them already (else they are read)."""
    post = config.postprocess.auto and not config.crops.classes
    refine = config.refine.enabled and config.refine.components == "auto" and not config.crops.classes
    if not (post or refine):
        return config
    if train is None:
        train, _ = load_samples(config, log=lambda *args, **kwargs: None, bad=[])
    structures = mask_structures(train, config.classes)
    if post:
        log("post-processing from the training masks: " + "; ".join(describe(n, s) for n, s in structures.items()))
        config = dataclasses.replace(config, postprocess=auto_postprocess(config.postprocess, structures))
    if refine:
        chosen = auto_refine(config.refine, structures)
        modes = {n: "skip" if n not in chosen.classes else "components" if n in chosen.components else "largest"
                 for n in config.classes}
        log("refine stage from the training masks: " + "; ".join(f"{n}: {REFINE_WORDS[m]}" for n, m in modes.items()))
        config = dataclasses.replace(config, refine=chosen)
    return config
