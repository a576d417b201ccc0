"""Batch inference on Apache Beam: `predict.py --runner beam` segments image files with RunInference, on Beam's
DirectRunner (worker processes on this machine) or any other runner that Beam's own pipeline options name.

Each image goes through `infer.predict.predict_image`, the function predict.py runs, so the masks, overlays and
Labelme files are the same files; the model is loaded once per worker (SegmentationHandler.load_model). Besides them
OUT holds FIGURES_FILE, one row per image and class (FIGURE_COLUMNS; rows in no particular order), and ERRORS_FILE,
one row per image that could not be segmented (unreadable, missing, a stem that collides): a bad image is a row
there, never a failed pipeline.

Figures, per image and written class: area_px (pixels of the mask at the image's size), components (8-connected),
mean_probability (the class's probability averaged over the mask's pixels; empty for an empty mask), uncertainty (the
class score of `--rank`, infer.ranking) and image_uncertainty (the image's score: the mean over all its classes).

Input: a folder (its image files), a glob (`scans/*.png`, `gs://bucket/xr/*.dcm`), a list file (`.txt` or `.lst`:
one path a line, relative ones against the list's folder, `#` comments), or one image; any filesystem Beam reads
(apache_beam.io.filesystems). OUT may be a local folder or a Beam filesystem path; images or outputs that are not
local pass through a temporary folder, and their Labelme files then name the image by its file name alone.
The model must be a local path on every worker. apache-beam is the optional `beam` extra, imported only here.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import posixpath
import tempfile
import threading
from pathlib import Path

import numpy as np

from keras_unet.errors import ConfigError, DataError, KerasUnetError, first_line
from keras_unet.imaging.postprocess import count_components
from keras_unet.infer.load import load_predictor
from keras_unet.infer.predict import predict_image
from keras_unet.infer.predictor import select_classes
from keras_unet.infer.ranking import image_score, score_image
from keras_unet.io import images
from keras_unet.io.files import prepare_out_dir, read_bytes, write_bytes_atomic

_ROOT_LEVEL = logging.getLogger().level
logging.getLogger().setLevel(logging.ERROR)  # Beam warns on import about Google Cloud clients it lacks
try:  # the optional `beam` extra: everything else in keras_unet runs without it
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
except ImportError:
    beam = FileSystems = PredictionResult = RunInference = None
    ModelHandler = object
finally:
    logging.getLogger().setLevel(_ROOT_LEVEL)

FIGURES_FILE = "figures.csv"
ERRORS_FILE = "errors.csv"
FIGURE_COLUMNS = ("image", "class", "area_px", "components", "mean_probability", "uncertainty", "image_uncertainty")
ERROR_COLUMNS = ("image", "error")
LIST_SUFFIXES = (".txt", ".lst")
MISSING = "apache-beam is not installed: pip install 'keras_unet[beam]' (README: Batch inference on Apache Beam)"


def require_beam() -> None:
    """Raise one clear KerasUnetError when the beam extra is not installed."""
    if beam is None:
        raise KerasUnetError(MISSING)


# -- paths on any Beam filesystem ---------------------------------------------------------------------


def is_local(path: str) -> bool:
    """Whether a path names this machine's filesystem (no `scheme://` prefix)."""
    return "://" not in str(path)


def file_name(path: str) -> str:
    """The last component of a local or `scheme://` path."""
    return posixpath.basename(str(path).rstrip("/")) if not is_local(path) else Path(path).name


def join(folder: str, *parts: str) -> str:
    """A path inside a local or `scheme://` folder."""
    return os.path.join(folder, *parts) if is_local(folder) else FileSystems.join(folder, *parts)


def read_file(path: str) -> bytes:
    """The bytes of a local or Beam-filesystem file; a DataError naming it when it cannot be read."""
    if is_local(path):
        return read_bytes(path)
    try:
        with FileSystems.open(path) as f:
            return f.read()
    except Exception as exc:  # BeamIOError, and whatever a filesystem's client raises
        raise DataError(path, f"cannot read ({type(exc).__name__}: {first_line(exc)[:200]})") from None


def _images_matching(pattern: str) -> list[str]:
    """The image files (by suffix; locally also DICOM by its marker) that a Beam glob matches, sorted."""
    found = [m.path for result in FileSystems.match([pattern]) for m in result.metadata_list]
    keep = images.is_image_file if is_local(pattern) else (lambda p: Path(p).suffix.lower() in images.IMAGE_SUFFIXES)
    return sorted(p for p in found if keep(p))


def read_list(path: str) -> list[str]:
    """The image paths a list file names, one a line (blank lines and `#` comments skipped)."""
    text = read_file(path).decode("utf-8", "replace")
    folder = os.path.dirname(path) if is_local(path) else FileSystems.split(path)[0]
    entries = [line.strip() for line in text.splitlines()]
    paths = [e if not is_local(e) or os.path.isabs(e) else join(folder, *e.split("/"))
             for e in entries if e and not e.startswith("#")]
    if not paths:
        raise DataError(path, "list file names no images")
    return paths


def list_inputs(source: str) -> list[str]:
    """Image paths from a folder, a glob, a list file (.txt, .lst) or one image, local or on a Beam filesystem."""
    source = str(source)
    if any(ch in source for ch in "*?["):
        found = _images_matching(source)
        if not found:
            raise DataError(source, "no image files match this pattern")
        return found
    if Path(source).suffix.lower() in LIST_SUFFIXES:
        return read_list(source)
    if is_local(source):
        return [str(p) for p in images.list_images(source)]
    if Path(source).suffix.lower() in images.IMAGE_SUFFIXES and FileSystems.exists(source):
        return [source]
    found = _images_matching(source.rstrip("/") + "/*")
    if not found:
        raise DataError(source, f"no image files ({', '.join(images.IMAGE_SUFFIXES)}) in this folder")
    return found


def split_collisions(paths) -> tuple[list[str], list[tuple[str, str]]]:
    """(paths to segment, (path, error) rows of those whose stem an earlier one has: their outputs would collide)."""
    unique, rejected, stems = [], [], {}
    for path in paths:
        stem = Path(file_name(path)).stem
        if stem in stems:
            rejected.append((path, f"{path}: has the same stem as {file_name(stems[stem])}; its outputs would collide"))
        else:
            stems[stem] = path
            unique.append(path)
    return unique, rejected


def prepare_output(out: str, overwrite: bool) -> str:
    """Check (and create, when local) the output folder as predict.py does: refused when it holds files."""
    if is_local(out):
        return str(prepare_out_dir(out, overwrite))
    held = [m.path for result in FileSystems.match([out.rstrip("/") + "/*"]) for m in result.metadata_list]
    if held and not overwrite:
        raise ConfigError(f"{out}: output folder already holds files ({file_name(held[0])}, ...); use another "
                          "--out, or --overwrite to replace them")
    return out


# -- one image ----------------------------------------------------------------------------------------


class _Recording:
    """A predictor that keeps the image and probabilities of its last `segment` (predict_image returns masks only)."""

    def __init__(self, predictor):
        self._predictor = predictor
        self.image = self.probs = None

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def segment(self, image, postprocess=None):
        probs, masks = self._predictor.segment(image, postprocess)
        self.image, self.probs = image, probs
        return probs, masks


class SerialNetwork:
    """A network called by one thread at a time (LiteRT interpreters are not thread-safe) that answers a repeat of
    its thread's last batch from memory: the uncertainty score's passes are the batch segment() has just run."""

    def __init__(self, network):
        self.network = network
        self.lock = threading.Lock()
        self.last = threading.local()

    def __call__(self, batch):
        batch = np.asarray(batch, dtype=np.float32)
        seen = getattr(self.last, "batch", None)
        if seen is not None and seen.shape == batch.shape and np.array_equal(seen, batch):
            return self.last.out.copy()
        with self.lock:
            out = np.asarray(self.network(batch), dtype=np.float32)
        self.last.batch, self.last.out = batch.copy(), out
        return out.copy()


def serial_predictor(predictor):
    """The predictor (and its refine stage's) with SerialNetwork networks, for a worker's threads to share."""
    for stage in (predictor, getattr(predictor, "fine", None)):
        if stage is not None and not isinstance(stage.network, SerialNetwork):
            stage.network = SerialNetwork(stage.network)
    return predictor


def figure_rows(path: str, masks, probs, classes, all_classes, scores: dict) -> list[list[str]]:
    """FIGURE_COLUMNS rows of one image: one per written class."""
    rows, overall = [], image_score(scores)
    for c, name in enumerate(classes):
        mask = masks[..., c] > 0
        area = int(np.count_nonzero(mask))
        mean = float(probs[..., all_classes.index(name)][mask].mean()) if area else None
        rows.append([path, name, str(area), str(count_components(mask.astype(np.uint8))),
                     "" if mean is None else f"{mean:.6f}", f"{scores[name]:.6f}", f"{overall:.6f}"])
    return rows


def segment_path(predictor, path: str, out: str, settings, labelme: bool = False, classes=None) -> list[list[str]]:
    """Segment one image file with predict.py's predict_image into out; its FIGURE_COLUMNS rows."""
    classes = select_classes(predictor, classes)
    recording = _Recording(predictor)
    if is_local(path) and is_local(out):
        masks = predict_image(recording, Path(path), Path(out), settings, labelme, classes)
    else:
        with tempfile.TemporaryDirectory(prefix="keras-unet-beam-") as tmp:
            staged = Path(tmp) / file_name(path)
            staged.write_bytes(read_file(path))
            masks = predict_image(recording, staged, Path(tmp), settings, labelme, classes)
            staged.unlink()
            _copy_tree(Path(tmp), out)
    scores = score_image(predictor, recording.image, settings.tta)
    return figure_rows(path, masks, recording.probs, classes, list(predictor.classes), scores)


def _copy_tree(folder: Path, out: str) -> None:
    """Every file under folder to the same relative path under out (local or a Beam filesystem)."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        target = join(out, *file.relative_to(folder).parts)
        if is_local(target):
            write_bytes_atomic(target, file.read_bytes())
        else:
            with FileSystems.create(target) as f:
                f.write(file.read_bytes())


def csv_line(values) -> str:
    """One CSV line (no line end), quoted as the csv module quotes."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


# -- the pipeline -------------------------------------------------------------------------------------


class SegmentationHandler(ModelHandler):
    """A RunInference model handler around load_predictor: image paths in, ("rows" | "error", ...) results out."""

    def __init__(self, model: str, out: str, settings, refine: bool = True, labelme: bool = False, classes=None,
                 max_batch_size: int = 4):
        self.model, self.out, self.settings, self.refine = str(model), str(out), settings, refine
        self.labelme, self.classes, self.max_batch_size = labelme, classes, max_batch_size

    def load_model(self):
        """The predictor, loaded once per worker process (RunInference shares it between the worker's threads)."""
        return serial_predictor(load_predictor(self.model, refine=self.refine))

    def run_inference(self, batch, model, inference_args=None):
        """Segment each path of the batch; an image that fails gives an "error" result, not an exception."""
        results = []
        for path in batch:
            try:
                value = ("rows", segment_path(model, path, self.out, self.settings, self.labelme, self.classes))
            except (KerasUnetError, OSError) as exc:
                value = ("error", str(exc) if isinstance(exc, KerasUnetError) else f"{path}: {exc}")
            results.append(PredictionResult(path, value, self.model))
        return results

    def batch_elements_kwargs(self):
        """Small batches: each image is segmented on its own (sizes differ), so batching only saves overhead."""
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_size}

    def get_metrics_namespace(self) -> str:
        return "keras_unet"


def _split(result):
    kind, value = result.inference
    if kind == "rows":
        for row in value:
            yield csv_line(row)
    else:
        yield beam.pvalue.TaggedOutput("errors", csv_line([result.example, value]))


def _write_csv(rows, out: str, name: str, columns, label: str):
    stem, suffix = os.path.splitext(name)
    return rows | label >> beam.io.WriteToText(join(out, stem), file_name_suffix=suffix, num_shards=1,
                                               shard_name_template="", header=csv_line(columns))


def build_pipeline(pipeline, paths, rejected, handler: SegmentationHandler) -> None:
    """Add the segmentation steps to a Beam pipeline: paths -> RunInference -> masks, FIGURES_FILE, ERRORS_FILE."""
    results = (pipeline
               | "Paths" >> beam.Create(list(paths))
               | "Spread" >> beam.Reshuffle()  # a runner may then hand the images to many workers
               | "Segment" >> RunInference(handler))
    split = results | "Split" >> beam.FlatMap(_split).with_outputs("errors", main="rows")
    _write_csv(split.rows, handler.out, FIGURES_FILE, FIGURE_COLUMNS, "Figures")
    listed = pipeline | "Rejected" >> beam.Create([csv_line(row) for row in rejected])
    errors = (split.errors, listed) | "AllErrors" >> beam.Flatten()
    _write_csv(errors, handler.out, ERRORS_FILE, ERROR_COLUMNS, "Errors")


def count_rows(path: str) -> int:
    """Data rows of a CSV file written by the pipeline (its header left out)."""
    text = read_file(path).decode("utf-8")
    return max(0, len(list(csv.reader(io.StringIO(text)))) - 1)


def predict_beam(model, source, out, settings, pipeline_args=(), refine: bool = True, labelme: bool = False,
                 classes=None, overwrite: bool = False, runner: str | None = None, log=print) -> dict:
    """Segment the images of source into out with a Beam pipeline (runner None: Beam's default, the DirectRunner)."""
    require_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    paths, rejected = split_collisions(list_inputs(source))
    out = prepare_output(str(out), overwrite)
    options = list(pipeline_args) + ([f"--runner={runner}"] if runner else [])
    if not any(a.startswith("--default_sdk_harness_log_level") for a in options):
        options.append("--default_sdk_harness_log_level=WARNING")  # workers log every bundle at INFO otherwise
    handler = SegmentationHandler(model, out, settings, refine, labelme, classes)
    with beam.Pipeline(options=PipelineOptions(options)) as pipeline:
        build_pipeline(pipeline, paths, rejected, handler)
    failed = count_rows(join(out, ERRORS_FILE))
    log(f"{len(paths) + len(rejected) - failed} image(s) segmented into {out} by Beam; figures in {FIGURES_FILE}"
        + (f"; {failed} skipped, listed in {ERRORS_FILE}" if failed else ""))
    return {"written": len(paths) + len(rejected) - failed, "failed": failed, "out": out}
