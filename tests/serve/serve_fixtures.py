"""What the server tests share: the v0.1 export's TFLite model (LiteRT, no TensorFlow, loads in about a second), a
service and app around it, and the request X-AnyLabeling's remote-server client sends."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE_DIR

MODEL = REPO / "tests" / "fixtures" / "v0_1" / "export" / "model.tflite"
IMAGE = SAMPLE_DIR / "phantom_000.png"
TOKEN = "s3cret-key"
_CACHE: dict = {}


def predictor():
    """The v0.1 TFLite model as a Predictor, loaded once per session."""
    pytest.importorskip("ai_edge_litert")
    if "predictor" not in _CACHE:
        from keras_unet.infer.load import load_predictor

        _CACHE["predictor"] = load_predictor(MODEL)
    return _CACHE["predictor"]


def make_app(token=TOKEN, predictors=None, **limits):
    """(app, service): a ModelService of the v0.1 model with the given Limits fields, and its FastAPI app."""
    pytest.importorskip("fastapi")
    from keras_unet.serve.app import create_app
    from keras_unet.serve.service import Limits, ModelService

    limits = Limits(**limits)
    service = ModelService(predictors or [predictor()] * limits.concurrency, limits=limits)
    return create_app(service, token), service


def data_uri(path: Path, mime: str = "image/png") -> str:
    """An image file as X-AnyLabeling sends it: data:<mime>;base64,<the file's bytes>."""
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode('utf-8')}"


def x_anylabeling_request(model_id: str, image: str, conf: float = 0.0, filter_classes=None) -> tuple[dict, dict]:
    """(headers, JSON payload) exactly as RemoteServer.predict_shapes builds them (x-anylabeling-cvhub 4.2.1,
    anylabeling/services/auto_labeling/remote_server.py): Content-Type and Token headers; model, image and
    params {conf_threshold, iou_threshold, epsilon_factor, and filter_classes once a filter was set}."""
    headers = {"Content-Type": "application/json", "Token": TOKEN}
    params = {"conf_threshold": conf, "iou_threshold": 0.0, "epsilon_factor": 0.001}
    if filter_classes is not None:
        params["filter_classes"] = filter_classes
    return headers, {"model": model_id, "image": image, "params": params}


class Blocking:
    """A network that waits for `release` before each call (and says when it started): holds a worker busy."""

    def __init__(self, network):
        self.network = network
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch):
        self.started.set()
        assert self.release.wait(30), "never released"
        return self.network(batch)
