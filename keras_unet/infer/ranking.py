"""Rank unlabelled images by how unsure the model is, so that an annotator corrects the most informative first.

The score of one class in one image runs from 0 (sure) to 1 (unsure). It is computed on the network's output at
the network's input resolution, letterbox padding cropped off, so an image's own size does not change it:

- p1, p2: the class's probabilities from the plain pass and from the pass on the horizontally mirrored image
  (flipped back, left_*/right_* channels swapped, as test-time augmentation does); m = (p1 + p2) / 2.
- R, the region scored: the pixels where p1 > 0.5 or p2 > 0.5, dilated by a disk of radius DILATE_RADIUS (2)
  pixels. Only R counts, so a large, confidently empty background does not make an image look sure.
- H, entropy: the mean over R of the binary entropy of m in bits, -m log2(m) - (1 - m) log2(1 - m) (0 to 1).
- D, disagreement: 1 - the soft Dice of the two passes over R, 1 - 2 sum(p1 p2) / (sum(p1^2) + sum(p2^2))
  (0 exactly when the passes agree, 1 when they do not overlap).
- class score = 1 - (1 - H) (1 - D) = H + D - H D: 0 only when both are 0, 1 when either is 1.
- R empty (neither pass predicts a single pixel of the class): score 1, since every class is a structure that
  every image should show; a class passed as not expected (`expected=`) scores 0 instead.

The image's score is the mean of its class scores. With a single pass (TTA off through --no-tta or the run's
settings, or classes without full left/right pairs) D is 0 and the score is the entropy term alone.
Thresholds and clean-up settings do not change the score; they shape only the pre-annotations.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_unet.config import PostprocessConfig
from keras_unet.errors import ConfigError, DataError, KerasUnetError
from keras_unet.imaging.metrics import soft_dice
from keras_unet.infer.batch import DONE, FAILED, SKIPPED, Batch
from keras_unet.infer.preannotate import write_preannotation
from keras_unet.io import images
from keras_unet.io.files import write_bytes_atomic
from keras_unet.progress import Progress
from keras_unet.run_folder import SUMMARY_FILE

REGION_THRESHOLD = 0.5  # a pixel belongs to a predicted structure when a pass puts it strictly above this
DILATE_RADIUS = 2  # pixels at the network's input resolution: the region also takes in the outline's margin
DEFAULT_TOP = 10
RANKING_FILE = "ranking.csv"


@dataclass(frozen=True)
class RankedImage:
    """One image's uncertainty: the image file, its score (the mean over classes) and each class's score."""

    path: Path
    score: float
    classes: dict = field(default_factory=dict)  # {class name: score}


# -- scores from probability maps (pure) -------------------------------------------------------------


def binary_entropy(p) -> np.ndarray:
    """Element-wise binary entropy in bits: 0 at p = 0 or 1, 1 at p = 0.5."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    out = np.zeros_like(p)
    inside = (p > 0.0) & (p < 1.0)
    q = p[inside]
    out[inside] = -(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q))
    return out


def disk(radius: int) -> np.ndarray:
    """A (2r + 1) square uint8 structuring element holding the pixels within radius of its centre."""
    r = max(0, int(radius))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


def uncertainty_region(maps, threshold: float = REGION_THRESHOLD, radius: int = DILATE_RADIUS) -> np.ndarray:
    """Boolean (h, w) region scored: pixels where any pass is above the threshold, dilated by a disk of radius."""
    import cv2

    predicted = np.zeros(np.shape(maps[0]), dtype=np.uint8)
    for m in maps:
        predicted |= (np.asarray(m) > threshold).astype(np.uint8)
    if radius > 0 and predicted.any():
        predicted = cv2.dilate(predicted, disk(radius))
    return predicted.astype(bool)


def class_score(maps, expected: bool = True, threshold: float = REGION_THRESHOLD,
                radius: int = DILATE_RADIUS) -> float:
    """One class's uncertainty (0 sure to 1 unsure) from its (h, w) probabilities of one or two passes."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    if not 1 <= len(maps) <= 2 or maps[0].ndim != 2 or any(m.shape != maps[0].shape for m in maps):
        raise ValueError(f"expected one or two (h, w) probability maps, got shapes {[m.shape for m in maps]}")
    if not all(np.isfinite(m).all() for m in maps):
        return 1.0  # a network that returns NaN or infinity for an image is as unsure as it gets
    region = uncertainty_region(maps, threshold, radius)
    if not region.any():
        return 1.0 if expected else 0.0
    inside = [m[region] for m in maps]
    entropy = float(binary_entropy(sum(inside) / len(inside)).mean())
    disagreement = 1.0 - soft_dice(*inside) if len(inside) == 2 else 0.0
    return float(np.clip(1.0 - (1.0 - entropy) * (1.0 - disagreement), 0.0, 1.0))


def class_scores(passes, classes, expected=None, threshold: float = REGION_THRESHOLD,
                 radius: int = DILATE_RADIUS) -> dict:
    """{class: score} from one or two (h, w, C) passes; expected names the classes every image shows (None: all)."""
    classes = list(classes)
    passes = [np.asarray(p) for p in passes]
    if any(p.ndim != 3 or p.shape[-1] != len(classes) for p in passes):
        raise ValueError(f"passes of shapes {[p.shape for p in passes]} do not match {len(classes)} class(es)")
    expected = set(classes if expected is None else expected)
    return {name: class_score([p[..., c] for p in passes], name in expected, threshold, radius)
            for c, name in enumerate(classes)}


def image_score(scores: dict) -> float:
    """An image's score: the mean of its class scores."""
    return float(np.mean(list(scores.values()))) if scores else 0.0


def sort_ranked(ranked) -> list[RankedImage]:
    """Most uncertain first; equal scores in path order."""
    return sorted(ranked, key=lambda r: (-r.score, str(r.path)))


# -- scoring image files ------------------------------------------------------------------------------


def score_image(predictor, image: np.ndarray, tta: bool | None = None, expected=None) -> dict:
    """{class: score} for one grayscale image; tta None uses the run's setting (False: entropy only)."""
    tta = predictor.config.postprocess.tta if tta is None else tta
    return class_scores(predictor.predict_passes(image, tta=tta), predictor.classes, expected)


def rank_images(predictor, image_paths, tta: bool | None = None, expected=None, on_error=None,
                step=None, on_score=None) -> list[RankedImage]:
    """Score image files, most uncertain first; a bad image raises, or goes to on_error(path, exc) when given.

    on_score(RankedImage) is called as each image is scored (a restartable caller notes it)."""
    ranked = []
    for path in image_paths:
        path = Path(path)
        try:
            scores = score_image(predictor, images.read_image(path), tta, expected)
            ranked.append(RankedImage(path, image_score(scores), scores))
            if on_score is not None:
                on_score(ranked[-1])
        except KerasUnetError as exc:
            if on_error is None:
                raise
            on_error(path, exc)
        if step is not None:
            step()
    return sort_ranked(ranked)


def is_annotated(image_path) -> bool:
    """Whether a Labelme JSON of the same stem lies beside the image."""
    return Path(image_path).with_suffix(".json").is_file()


def split_annotated(image_paths) -> tuple[list[Path], list[Path]]:
    """(images still to annotate, images with a Labelme JSON beside them)."""
    todo, done = [], []
    for path in map(Path, image_paths):
        (done if is_annotated(path) else todo).append(path)
    return todo, done


# -- writing ------------------------------------------------------------------------------------------


def ranking_csv(ranked, classes) -> str:
    """CSV text: rank, image, score, then one score column per class, one row per image in the given order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "image", "score", *classes])
    for rank, item in enumerate(ranked, 1):
        writer.writerow([rank, str(item.path), f"{item.score:.6f}", *(f"{item.classes[c]:.6f}" for c in classes)])
    return buffer.getvalue()


def format_top(ranked, top: int = DEFAULT_TOP) -> list[str]:
    """Printable lines of the first `top` ranked images: rank, score, image, class scores."""
    lines = []
    for rank, item in enumerate(list(ranked)[:max(0, top)], 1):
        per_class = ", ".join(f"{name} {value:.3f}" for name, value in item.classes.items())
        lines.append(f"{rank:>4}  {item.score:.3f}  {item.path}  ({per_class})")
    return lines


def write_ranking(ranked, out, predictor, settings: PostprocessConfig | None = None,
                  top: int = DEFAULT_TOP) -> list[Path]:
    """Write out/ranking.csv (most uncertain first) and Labelme pre-annotations (out/<stem>.json) of the top images.

    The pre-annotations are the post-processed predicted polygons, as `predict.py --labelme` writes them, with
    imagePath relative to out/ and pointing at the original image (at an 8-bit copy beside the JSON for 16-bit and
    DICOM images, infer.preannotate). Existing files of those names are replaced
    (check the folder first with io.files.prepare_out_dir). Returns the paths of the JSON files written.
    """
    settings = predictor.config.postprocess if settings is None else settings
    ranked = sort_ranked(ranked)
    chosen = ranked[:max(0, int(top))]
    stems: dict = {}
    for item in chosen:
        if item.path.stem in stems:
            raise DataError(item.path, f"has the same stem as {stems[item.path.stem]}; their pre-annotations "
                                       "would collide")
        stems[item.path.stem] = item.path
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / RANKING_FILE, ranking_csv(ranked, predictor.classes).encode("utf-8"))
    written = []
    for item in chosen:
        image = images.read_image(item.path)
        _, masks = predictor.segment(image, settings)
        json_path = write_preannotation(out / f"{item.path.stem}.json", masks, predictor.classes, item.path, image,
                                        predictor.config.normalization)
        written.append(json_path)
    return written


def rank_folder(predictor, source, out, settings: PostprocessConfig | None = None, top: int = DEFAULT_TOP,
                overwrite: bool = False, log=print, progress: bool = True) -> dict:
    """Rank an image folder's unannotated images, write ranking.csv and the top images' pre-annotations, print them.

    Restartable: run again after a kill, it keeps the scores an earlier run noted and scores the rest (the top
    pre-annotations are written again); overwrite redoes all. out/summary.json lists each image's outcome."""
    if top < 0:
        raise ConfigError(f"--top must be 0 or more, got {top}")
    settings = predictor.config.postprocess if settings is None else settings
    todo, annotated = split_annotated(images.list_images(source))
    record = {"input": os.path.abspath(Path(source).expanduser()), "model": predictor.source,
              "postprocess": dataclasses.asdict(settings)}
    with Batch(out, "predict --rank", record, overwrite) as batch:
        out = batch.out
        for path in annotated:
            batch.record(path, SKIPPED, "already annotated (a Labelme JSON beside it)")
        stems, unique, ranked = {}, [], []
        for path in todo:
            if path.stem in stems:
                reason = f"{path}: has the same stem as {stems[path.stem].name}; its outputs would collide"
                batch.record(path, FAILED, reason)
                log(f"skipped: {reason}")
                continue
            stems[path.stem] = path
            earlier = _earlier_score(batch.finished(path), predictor.classes)
            if earlier is None:
                unique.append(path)
            else:
                ranked.append(RankedImage(path, *earlier))
                batch.record(path, DONE, "scored by an earlier run", score=earlier[0], classes=earlier[1])
        bar = Progress(len(unique)) if progress and unique else None
        say = bar.say if bar else log

        def skip(path, exc):
            batch.record(path, FAILED, str(exc))
            say(f"skipped: {exc}")

        def note(item):
            batch.record(item.path, DONE, score=item.score, classes=item.classes)

        ranked += rank_images(predictor, unique, tta=settings.tta, on_error=skip, step=bar.step if bar else None,
                              on_score=note)
        if bar:
            bar.close()
        written = write_ranking(ranked, out, predictor, settings, top)
    ranked = sort_ranked(ranked)
    failed = [entry["image"] for entry in batch.records.values() if entry["status"] == FAILED]
    earlier = sum(1 for entry in batch.records.values() if entry.get("reason") == "scored by an earlier run")
    log(f"{len(ranked)} image(s) ranked" + (f" ({earlier} scored by an earlier run)" if earlier else "")
        + f"; {len(annotated)} already annotated (a Labelme JSON beside them), skipped"
        + (f"; {len(failed)} skipped as reported above" if failed else "")
        + f"; wrote {out / RANKING_FILE} and {len(written)} pre-annotation(s) (list: {out / SUMMARY_FILE})")
    if written:
        log("annotate these next (most uncertain first; score 0 = sure, 1 = unsure):")
        for line in format_top(ranked, top):
            log(line)
    return {"ranked": ranked, "annotated": [str(p) for p in annotated], "failed": failed,
            "written": [str(p) for p in written], "out": str(out)}


def _earlier_score(entry, classes) -> tuple[float, dict] | None:
    """(score, class scores) of an earlier run's record when it is complete for these classes, else None."""
    if not entry or not isinstance(entry.get("classes"), dict) or set(entry["classes"]) != set(classes):
        return None
    try:
        return float(entry["score"]), {name: float(entry["classes"][name]) for name in classes}
    except (KeyError, TypeError, ValueError):
        return None
