"""The runtime-independent core of inference: raw image in, probabilities and masks at the original size out.

Any network that maps float32 (N, S, S, 1) inputs to (N, S, S, C) probabilities plugs in (`infer.runtimes`):
`infer.load.load_predictor` gives it Keras, SavedModel, TFLite or ONNX networks, `infer.edge.EdgeSegmenter` a LiteRT
one. numpy and OpenCV only.

Every runtime goes through the same steps, so thresholds and scores do not depend on the runtime:
`preprocess.prepare` (normalise, letterbox to the square network input), the network, then `preprocess.unletterbox`
back to the image's original size. Test-time augmentation (TTA) averages that with the same steps run on the
horizontally flipped image, whose output is flipped back and has its left_*/right_* channels swapped, and, where the
run's `postprocess.tta_shift` / `tta_scales` ask for them, with shifted and zoomed views of each (`imaging.tta`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_unet.classes import flip_permutation, parse_classes
from keras_unet.config import Config, PostprocessConfig, view_checks
from keras_unet.errors import ConfigError, KerasUnetError
from keras_unet.imaging import crops
from keras_unet.imaging.postprocess import class_min_areas, class_thresholds, clean_masks, threshold
from keras_unet.imaging.preprocess import normalize, prepare, unletterbox
from keras_unet.imaging.tta import merge_views, view_matrices, warp


class Predictor:
    """A network plus the run settings it was trained with: raw image in, probabilities and masks out."""

    def __init__(self, network, config: Config, source=""):
        self.network = network  # callable: float32 (N, S, S, 1) -> float32 probabilities (N, S, S, C)
        self.config = config
        self.classes = config.outputs()
        self.source = str(source)
        self.flip = flip_permutation(self.classes)

    def predict_probs(self, image: np.ndarray, tta: bool | None = None, normalized: bool = False,
                      views: tuple | None = None) -> np.ndarray:
        """(H, W, C) float32 probabilities at the image's original size; tta None uses the run's setting.

        normalized: the image is already mapped to [0, 1] (a crop of a normalised image), not a raw one.
        views: (tta_shift, tta_scales) of the extra views with tta (`tta_views`); None: the run's."""
        tta = self.config.postprocess.tta if tta is None else tta
        views = tta_views(self.config.postprocess) if views is None else views
        probs = [unletterbox(out, box) for out, box in self._views(image, tta, normalized, views)]
        if len(probs) == 1:
            return probs[0]
        flipped_back = probs[1][:, ::-1][..., self.flip]
        return ((probs[0] + flipped_back) * np.float32(0.5)).astype(np.float32)

    def segment(self, image: np.ndarray, postprocess: PostprocessConfig | None = None):
        """(probabilities, uint8 0/1 masks), both (H, W, C), cleaned with the run's settings unless given."""
        settings = self.config.postprocess if postprocess is None else postprocess
        probs = self.predict_probs(image, tta=settings.tta, views=tta_views(settings))
        return probs, clean_masks(probs, self.classes, settings)

    def predict_passes(self, image: np.ndarray, tta: bool = True) -> list[np.ndarray]:
        """Each pass's (h, w, C) probabilities at the network's resolution, letterbox padding cropped off.

        The plain pass comes first; with tta (and a full left/right class pairing) the mirrored pass follows,
        flipped back and with its left_*/right_* channels swapped, so both are aligned with the image.
        """
        passes = []
        for out, box in self._views(image, tta):
            (h, w), (top, left) = box.inner, box.offset
            passes.append(out[top:top + h, left:left + w])
        if len(passes) == 2:
            passes[1] = passes[1][:, ::-1][..., self.flip]
        return [np.ascontiguousarray(p, dtype=np.float32) for p in passes]

    def _views(self, image, tta: bool, normalized: bool = False, views: tuple = (0.0, ())) -> list:
        """(network output, letterbox) for the image and, with tta and a full left/right pairing, its mirror; with
        tta and views, each output is the mean over its shifted and zoomed views too (all in one batch)."""
        image = _gray(image)
        mirrors = [image, image[:, ::-1]] if tta and self.flip is not None else [image]
        prepared = [prepare(view, self.config, normalized) for view in mirrors]
        matrices = view_matrices(self.config.image_size, *views) if tta else []
        inputs = [x for x, _ in prepared]
        outputs = self._run(np.stack(inputs + [warp(x, m) for x in inputs for m in matrices]).astype(np.float32))
        n, k = len(inputs), len(matrices)
        merged = [merge_views(outputs[i], outputs[n + i * k:n + (i + 1) * k], matrices) for i in range(n)] if k else \
            outputs[:n]
        return [(out, box) for out, (_, box) in zip(merged, prepared)]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = np.asarray(self.network(batch), dtype=np.float32)
        size = self.config.image_size
        if out.shape != (len(batch), size, size, len(self.classes)):
            raise KerasUnetError(f"{self.source}: the network returned shape {out.shape}, expected "
                                 f"{(len(batch), size, size, len(self.classes))} for {len(self.classes)} class(es)")
        return out


class RefinedPredictor(Predictor):
    """A whole-image Predictor whose structures are re-segmented by a second one on a crop around each."""

    def __init__(self, coarse: Predictor, fine: Predictor):
        super().__init__(coarse.network, coarse.config, coarse.source)
        missing = [c for c in fine.config.crops.classes if c not in self.classes]
        if missing or not fine.config.crops.classes:
            raise KerasUnetError(f"{fine.source}: refine model's crop classes {fine.config.crops.classes} do not "
                                 f"match the classes of {coarse.source} ({', '.join(self.classes)})")
        self.fine = fine

    def predict_probs(self, image: np.ndarray, tta: bool | None = None, views: tuple | None = None) -> np.ndarray:
        """(H, W, C) probabilities: the whole-image model's, with each refined class replaced (refine.blend 1) or
        blended with the refine model's inside its crops; both stages take the same TTA views."""
        views = tta_views(self.config.postprocess) if views is None else views
        probs = super().predict_probs(image, tta, views=views)
        found = self.structure_crops(image, probs)
        patches = [self.fine.predict_probs(cut, tta, normalized=True, views=views)[..., 0] for _, _, cut in found]
        return self.merge_crops(probs, found, patches)

    def structure_crops(self, image: np.ndarray, probs: np.ndarray) -> list:
        """(channel, box, normalised crop) for each structure of the refined classes the first model found: its
        largest part, or each part (of at least the class's min area) of a crops.components class."""
        gray = normalize(_gray(image), self.fine.config.normalization)  # crops are cut from the normalised image
        cut = threshold(probs, class_thresholds(self.config.postprocess, self.classes))
        min_areas = class_min_areas(self.config.postprocess, self.classes)
        crop_config = self.fine.config.crops
        found = []
        for name in crop_config.classes:
            c = self.classes.index(name)
            for box in crops.structure_boxes(cut[..., c], crop_config.margin, name in crop_config.components,
                                             min_areas[c]):  # none found: nothing to refine
                found.append((c, box, crops.crop(gray, box)))
        return found

    def merge_crops(self, probs: np.ndarray, found: list, patches: list) -> np.ndarray:
        """probs with each crop's (side, side) patch of structure_crops pasted back (the first model's outside
        the crops, the mean or max where crops of one class overlap) and blended with weight refine.blend."""
        blend = np.float32(self.config.refine.blend)
        for c in sorted({c for c, _, _ in found}):
            mine = [(box, patch) for (k, box, _), patch in zip(found, patches) if k == c]
            refined = crops.paste_all(probs[..., c], [p for _, p in mine], [b for b, _ in mine],
                                      self.fine.config.crops.overlap)
            probs[..., c] = blend * refined + (np.float32(1.0) - blend) * probs[..., c]
        return probs


def _gray(image) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a non-empty 2-D grayscale image, got shape {a.shape}")
    return a


def tta_views(settings: PostprocessConfig) -> tuple:
    """(shift, zoom factors) of the extra TTA views that post-processing settings ask for."""
    return float(settings.tta_shift), tuple(float(s) for s in settings.tta_scales)


def postprocess_settings(base: PostprocessConfig, enabled: bool = True, tta: bool = True,
                         threshold: float | None = None, tta_shift: float | None = None,
                         tta_scales=None) -> PostprocessConfig:
    """The run's clean-up settings with command-line switches applied (a threshold replaces per-class ones;
    tta_shift / tta_scales replace the run's extra TTA views)."""
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {threshold}")
    changes = {"enabled": base.enabled and enabled, "tta": base.tta and tta}
    if threshold is not None:
        changes.update(threshold=float(threshold), thresholds={})
    if tta_shift is not None:
        changes["tta_shift"] = tta_shift
    if tta_scales is not None:
        changes["tta_scales"] = list(tta_scales)
    wrong = [message for ok, message in view_checks(changes.get("tta_shift", base.tta_shift),
                                                     changes.get("tta_scales", base.tta_scales),
                                                     ("--tta-shift", "--tta-scales")) if not ok]
    if wrong:
        raise ConfigError(wrong[0])
    return dataclasses.replace(base, **changes)

def select_classes(predictor: Predictor, classes) -> list[str]:
    """The classes to use: all the model's, or the named subset of them (ConfigError for one it lacks)."""
    classes = parse_classes(classes)
    if not classes:
        return list(predictor.classes)
    unknown = [c for c in classes if c not in predictor.classes]
    if unknown:
        raise ConfigError(f"class(es) {', '.join(unknown)} not predicted by the model "
                          f"(it predicts {', '.join(predictor.classes)})")
    return list(classes)
