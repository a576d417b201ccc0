"""The refine stage in an export: the second model's inputs (crops cut by the Keras chain), the Keras chain's
reference probabilities, the chain's parity figures and its description in metadata.json.

One implementation of the chain: `infer.predictor.RefinedPredictor`, here around the Keras networks (the reference)
and around each artefact's pair of networks (what load_predictor and the edge runner run from the export)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from keras_unet.config import Config
from keras_unet.errors import ExportError
from keras_unet.export.parity import compare, predict_all
from keras_unet.imaging.preprocess import prepare
from keras_unet.infer.predictor import Predictor, RefinedPredictor
from keras_unet.infer.runtimes import keras_network
from keras_unet.io import images
from keras_unet.run_folder import REFINE_DIR

CHAIN_LATENCY_RUNS = 3


@dataclass
class Stage:
    """One model of the chain as the exporter writes and checks it."""

    name: str  # "first" or "refine"
    folder: str  # where its artefacts go inside the export folder: "" or "refine"
    model: object  # the float32 Keras model
    config: Config
    calibration: list  # image files, or prepared (S, S, 1) crops
    batch: np.ndarray  # the parity inputs (N, S, S, 1)
    reference: np.ndarray = field(default=None)  # the Keras model's probabilities on batch


def keras_chain(first: Stage, fine_model, fine_config: Config) -> RefinedPredictor:
    """The Keras chain: the reference every exported chain is compared with."""
    coarse = Predictor(keras_network(first.model), first.config, "model.keras")
    return RefinedPredictor(coarse, Predictor(keras_network(fine_model), fine_config, f"{REFINE_DIR}/model.keras"))


def crop_inputs(chain: RefinedPredictor, paths) -> np.ndarray:
    """The refine model's inputs on these images, (N, S, S, 1): each structure's crop as the chain cuts it from the
    first model's probabilities (with the run's TTA), prepared at the refine size."""
    out = []
    for path in paths:
        image = images.read_image(path)
        probs = Predictor.predict_probs(chain, image)  # the first stage alone
        out += [prepare(cut, chain.fine.config, normalized=True)[0] for _, _, cut in chain.structure_crops(image, probs)]
    size = chain.fine.config.image_size
    return np.stack(out).astype(np.float32) if out else np.zeros((0, size, size, 1), np.float32)


def refine_stage(chain: RefinedPredictor, fine_model, calibration, parity) -> Stage:
    """The refine model's Stage: calibrated and checked on crops of the calibration and parity images."""
    batch = crop_inputs(chain, parity)
    if not len(batch):
        raise ExportError(f"the first stage finds none of the refined classes ({', '.join(chain.fine.config.crops.classes)})"
                          f" in the {len(parity)} parity image(s): the refine stage cannot be checked")
    calibration_crops = list(crop_inputs(chain, calibration)) or list(batch)
    reference = predict_all(chain.fine.network, batch) if len(batch) else batch
    return Stage("refine", REFINE_DIR, fine_model, chain.fine.config, calibration_crops, batch, reference)


def chain_probs(predictor: Predictor, raw: list) -> list:
    """The chain's probabilities at each image's own size."""
    return [predictor.predict_probs(image) for image in raw]


def compare_chain(reference: list, probs: list, classes) -> dict:
    """parity.compare over images of any size: the pixels of every image pooled per class."""
    def flat(arrays):
        return np.concatenate([a.reshape(-1, 1, a.shape[-1]) for a in arrays])

    return compare(flat(reference), flat(probs), classes)


def chain_latency_ms(predictor: Predictor, image: np.ndarray, runs: int = CHAIN_LATENCY_RUNS) -> float:
    """Median milliseconds of the whole chain on one raw image (normalise to probabilities), after a warm-up."""
    predictor.predict_probs(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.predict_probs(image)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def describe(config: Config, fine_config: Config, crops: int) -> dict:
    """metadata.json's "refine" section: the refine model's settings and the rule that joins the two stages."""
    return {
        "folder": REFINE_DIR,
        "function": "keras_unet.infer.predictor.RefinedPredictor",
        "config": fine_config.to_dict(),
        "image_size": fine_config.image_size,
        "classes": list(fine_config.crops.classes),
        "output": fine_config.outputs(),
        "crop": {"function": "keras_unet.infer.predictor.RefinedPredictor.structure_crops",
                 "rule": "per refined class, the largest 8-connected component of the first stage's mask (its "
                         "probabilities at the class threshold); a square centred on it, side = its longer side x "
                         "(1 + 2 margin), zero-padded past the border, cut from the image normalised with the refine "
                         "stage's normalization, letterboxed to image_size",
                 "margin": fine_config.crops.margin},
        "blend": config.refine.blend,
        "blend_rule": "inside the crop: blend x refine + (1 - blend) x first stage; outside it the first stage's",
        "tta": config.postprocess.tta,
        "tta_views": {"shift": config.postprocess.tta_shift, "scales": list(config.postprocess.tta_scales),
                      "rule": "with tta, each stage also runs its input moved by shift x image_size pixels up, down, "
                              "left and right and zoomed about the centre by each scale (bilinear, zero fill), maps "
                              "each output back and averages every pixel over the views that saw it "
                              "(keras_unet.imaging.tta)"},
        "postprocessing": "keras_unet.imaging.postprocess.clean_masks on the joined probabilities (config.postprocess)",
        "parity_crops": crops,
    }
