"""The model behind the server: the project's predictor (any artefact, TTA, refine stage, post-processing), how many
requests may run and wait at once, and what one request asks of it (no web framework here).

`ModelService` holds one predictor per concurrent slot (a LiteRT interpreter is not safe to share between threads)
and runs each request on its own worker thread: at most `concurrency` run at once, at most `queue` more wait, and
`Admission` answers 503 beyond that before the request's body is read, so a burst holds at most
(concurrency + queue) bodies in memory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import queue as queues
import threading
from pathlib import Path

from keras_unet.config import PostprocessConfig
from keras_unet.errors import ConfigError
from keras_unet.infer.predictor import postprocess_settings
from keras_unet.io.images import MAX_PIXELS
from keras_unet.serve import protocol

DEFAULT_MODEL_ID = "keras_unet"
DEFAULT_CONCURRENCY = 1
DEFAULT_QUEUE = 8
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a request body; a 16-bit 4000 x 4000 DICOM in base64 is about 43 MiB
DEFAULT_MAX_PIXELS = 50_000_000


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much the server takes on: requests running and waiting, body bytes and image pixels per request."""

    concurrency: int = DEFAULT_CONCURRENCY
    queue: int = DEFAULT_QUEUE
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def checked(self) -> "Limits":
        """The limits, or ConfigError naming the first one out of range."""
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.queue < 0:
            raise ConfigError(f"--queue must be 0 or more, got {self.queue}")
        if self.max_bytes < 1024:
            raise ConfigError(f"--max-bytes must be at least 1024, got {self.max_bytes}")
        if not 1 <= self.max_pixels <= MAX_PIXELS:
            raise ConfigError(f"--max-pixels must be between 1 and {MAX_PIXELS:,}, got {self.max_pixels}")
        return self


class Admission:
    """Counts the requests inside (running or waiting); one over `limit` is refused with 503."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.inside = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def enter(self):
        """Hold a place for one request for the duration, or raise the 503 RequestError when none is left."""
        with self._lock:
            if self.inside >= self.limit:
                raise protocol.RequestError(503, "QUEUE_FULL", f"server busy: {self.inside} request(s) running or "
                                                               "waiting already; try again shortly")
            self.inside += 1
        try:
            yield
        finally:
            with self._lock:
                self.inside -= 1


class ModelService:
    """Predictors for one model, the run's post-processing settings, and the worker threads that use them."""

    def __init__(self, predictors, settings: PostprocessConfig | None = None, model_id: str = DEFAULT_MODEL_ID,
                 limits: Limits | None = None):
        predictors = list(predictors)
        self.limits = (limits or Limits()).checked()
        if len(predictors) != self.limits.concurrency:
            raise ValueError(f"{len(predictors)} predictor(s) for a concurrency of {self.limits.concurrency}")
        self.predictor = predictors[0]
        self.classes = list(self.predictor.classes)
        self.settings = self.predictor.config.postprocess if settings is None else settings
        self.model_id = str(model_id)
        self._free = queues.SimpleQueue()
        for predictor in predictors:
            self._free.put(predictor)
        self.pool = concurrent.futures.ThreadPoolExecutor(self.limits.concurrency, thread_name_prefix="keras-unet")
        self.admission = Admission(self.limits.concurrency + self.limits.queue)

    def close(self) -> None:
        """Stop the worker threads (running requests finish first)."""
        self.pool.shutdown(wait=True)

    def info(self) -> dict:
        """The model's entry in /v1/models: what X-AnyLabeling shows (display_name, classes, widgets) and reads."""
        source = Path(self.predictor.source)
        return {
            "display_name": f"keras_unet U-Net: {', '.join(self.classes)} ({source.parent.name}/{source.name})",
            "classes": list(self.classes),
            "widgets": [{"name": "button_run", "value": None}, {"name": "input_conf", "value": None},
                        {"name": "edit_conf", "value": float(self.settings.threshold)},
                        {"name": "button_classes_filter", "value": None}],
            "params": {"image_size": int(self.predictor.config.image_size), "threshold": self.settings.threshold,
                       "thresholds": dict(self.settings.thresholds or {}), "tta": bool(self.settings.tta),
                       "postprocess": bool(self.settings.enabled), "refine": hasattr(self.predictor, "fine"),
                       "model_file": source.name},
        }

    def request_settings(self, params) -> tuple[PostprocessConfig, list[str]]:
        """(post-processing settings, classes to answer with) for a request's params (400 for a bad one).

        conf_threshold (X-AnyLabeling's confidence box) or threshold: one probability threshold for every class;
        absent, 0, or the run's own value advertised in /v1/models keeps the run's (per-class) thresholds.
        filter_classes or classes: a subset of the model's classes. tta, postprocess: booleans."""
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise protocol.bad_request("\"params\" must be an object")
        threshold = params.get("threshold", params.get("conf_threshold"))
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise protocol.bad_request(f"threshold must be a number, got {threshold!r}")
        if threshold is not None and (threshold == 0 or abs(threshold - self.settings.threshold) < 1e-9):
            threshold = None
        switches = {}
        for key in ("tta", "postprocess"):
            value = params.get(key, True)
            if not isinstance(value, bool):
                raise protocol.bad_request(f"{key} must be true or false, got {value!r}")
            switches[key] = value
        try:
            settings = postprocess_settings(self.settings, enabled=switches["postprocess"], tta=switches["tta"],
                                            threshold=threshold)
        except ConfigError as exc:
            raise protocol.bad_request(str(exc).replace("--threshold", "threshold")) from None
        return settings, self._classes(params.get("classes", params.get("filter_classes")))

    def _classes(self, wanted) -> list[str]:
        if not wanted:  # X-AnyLabeling sends [] for "all classes"
            return list(self.classes)
        if not isinstance(wanted, list) or not all(isinstance(c, str) for c in wanted):
            raise protocol.bad_request("classes must be a list of class names")
        unknown = [c for c in wanted if c not in self.classes]
        if unknown:
            raise protocol.bad_request(f"class(es) {', '.join(unknown)} not predicted by this model "
                                       f"(it predicts {', '.join(self.classes)})")
        return [c for c in self.classes if c in wanted]

    def run(self, data: bytes, settings: PostprocessConfig, classes, masks: bool = False) -> dict:
        """Decode image bytes and segment them on a free predictor (call from a worker thread): the answer's data."""
        image = protocol.decode_image(data, self.limits.max_pixels)
        predictor = self._free.get()
        try:
            probs, found = predictor.segment(image, settings)
        finally:
            self._free.put(predictor)
        keep = [self.classes.index(name) for name in classes]
        probs, found = probs[..., keep], found[..., keep]
        answer = {"shapes": protocol.polygon_shapes(probs, found, classes), "replace": True, "description": ""}
        if masks:
            answer.update(model=self.model_id, height=int(image.shape[0]), width=int(image.shape[1]),
                          classes=list(classes),
                          pixels={name: int(found[..., c].sum()) for c, name in enumerate(classes)},
                          masks={name: protocol.mask_png(found[..., c]) for c, name in enumerate(classes)})
        return answer

    async def submit(self, data: bytes, settings: PostprocessConfig, classes, masks: bool = False) -> dict:
        """run() on the worker threads, awaited (requests beyond `concurrency` wait their turn in the pool)."""
        import asyncio

        future = self.pool.submit(self.run, data, settings, classes, masks)
        return await asyncio.wrap_future(future)


def load_service(model, settings_for, limits: Limits, model_id: str = DEFAULT_MODEL_ID, refine: bool = True,
                 log=print) -> ModelService:
    """A ModelService with limits.concurrency predictors of one model (infer.load.load_predictor each).

    settings_for: the predictor's run settings -> the PostprocessConfig to serve with."""
    from keras_unet.infer.load import load_predictor

    limits = limits.checked()
    predictors = [load_predictor(model, refine=refine) for _ in range(limits.concurrency)]
    service = ModelService(predictors, settings_for(predictors[0].config.postprocess), model_id, limits)
    log(f"model {predictors[0].source}: classes {', '.join(service.classes)}; "
        f"{limits.concurrency} at once, {limits.queue} waiting at most")
    return service
