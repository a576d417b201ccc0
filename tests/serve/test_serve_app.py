"""The model server in-process (FastAPI's TestClient / httpx on the ASGI app): X-AnyLabeling's exact request and how
it reads the answer, polygons that rasterise back to the predictor's masks, and every refusal (401, 413, 400, 404,
503) with its one-line message."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import struct
import zlib

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from helpers import write_dicom  # noqa: E402
from keras_unet.data.rasterize import rasterize  # noqa: E402
from keras_unet.imaging.metrics import dice  # noqa: E402
from keras_unet.infer.predictor import Predictor  # noqa: E402
from keras_unet.io.images import read_image  # noqa: E402
from keras_unet.io.labelme import labelme_document, read_labelme, write_labelme  # noqa: E402
from keras_unet.serve.protocol import decode_mask_png  # noqa: E402
from serve_fixtures import IMAGE, TOKEN, Blocking, data_uri, make_app, predictor, x_anylabeling_request  # noqa: E402


@pytest.fixture(scope="module")
def client():
    app, _ = make_app()
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def expected():
    """(image, the predictor's masks with the run's settings) for IMAGE."""
    image = read_image(IMAGE)
    return image, predictor().segment(image)[1]


def auth(**extra):
    return {"Token": TOKEN, **extra}


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height in its header and holds no pixel data (a decompression bomb's shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_x_anylabeling_models_then_predict_gives_polygons_that_rasterise_to_the_masks(client, expected, tmp_path):
    # get_available_models: GET {server}/v1/models with its headers, then result.get("data", {})
    models = client.get("/v1/models", headers={"Content-Type": "application/json", "Token": TOKEN})
    assert models.status_code == 200
    info = models.json().get("data", {})
    (model_id, entry), = info.items()
    assert entry["classes"] == ["left_clavicle", "right_clavicle", "rib"]
    assert "keras_unet" in entry["display_name"]
    conf = next(w["value"] for w in entry["widgets"] if w["name"] == "edit_conf")  # the box X-AnyLabeling shows
    headers, payload = x_anylabeling_request(model_id, data_uri(IMAGE), conf=conf)
    answer = client.post("/v1/predict", json=payload, headers=headers)
    assert answer.status_code == 200, answer.text
    data = answer.json().get("data", {})
    assert data.get("replace") is True
    shapes = data.get("shapes", [])
    for shape in shapes:  # the keys predict_shapes reads: label, shape_type, points (x, y pairs), score
        assert shape["shape_type"] == "polygon" and len(shape["points"]) >= 3
        assert all(len(p) == 2 for p in shape["points"]) and 0.0 < shape["score"] <= 1.0
    assert {s["label"] for s in shapes} == set(entry["classes"])
    # the shapes as a Labelme file, read and rasterised by the project: the predictor's own masks
    image, masks = expected
    path = tmp_path / "phantom_000.json"
    write_labelme(path, labelme_document(shapes, IMAGE.name, *image.shape))
    drawn, _ = rasterize(read_labelme(path), entry["classes"])
    for c, name in enumerate(entry["classes"]):
        assert masks[..., c].sum() > 500, name
        assert dice(drawn[..., c], masks[..., c]) >= 0.98, name


def test_segment_returns_the_predictor_masks_for_a_raw_body_a_16_bit_png_and_a_dicom_sent_as_jpeg(client, expected,
                                                                                                   tmp_path):
    image, masks = expected
    raw = client.post("/v1/segment", content=IMAGE.read_bytes(), headers=auth())  # no Content-Type: sniffed
    assert raw.status_code == 200, raw.text
    data = raw.json()["data"]
    assert (data["height"], data["width"]) == image.shape and data["classes"] == predictor().classes
    for c, name in enumerate(data["classes"]):
        assert np.array_equal(decode_mask_png(data["masks"][name]), masks[..., c]), name
        assert data["pixels"][name] == int(masks[..., c].sum())
    wide = (image.astype(np.uint16) * 257)  # the same picture at 16 bits: the predictor normalises it alike
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    deep = client.post("/v1/segment", json={"image": data_uri(tmp_path / "wide.png"), "params": {"classes": ["rib"]}},
                       headers=auth())
    assert deep.status_code == 200, deep.text
    assert list(deep.json()["data"]["masks"]) == ["rib"]
    assert np.array_equal(decode_mask_png(deep.json()["data"]["masks"]["rib"]), masks[..., 2])
    dcm = write_dicom(tmp_path / "x.dcm", wide)  # X-AnyLabeling labels a .dcm file image/jpeg
    sent = client.post("/v1/segment", json={"image": data_uri(dcm, "image/jpeg")}, headers=auth())
    assert sent.status_code == 200, sent.text
    assert sent.json()["data"]["pixels"]["rib"] > 0


def test_threshold_and_class_filter_from_the_request(client, expected):
    entry = client.get("/v1/models", headers=auth()).json()["data"]["keras_unet"]
    headers, payload = x_anylabeling_request("keras_unet", data_uri(IMAGE), conf=0.0, filter_classes=["rib"])
    ribs = client.post("/v1/predict", json=payload, headers=headers).json()["data"]["shapes"]
    assert ribs and {s["label"] for s in ribs} == {"rib"}
    _, payload = x_anylabeling_request("keras_unet", data_uri(IMAGE), conf=0.9)
    strict = client.post("/v1/segment", json=payload, headers=auth()).json()["data"]["pixels"]
    _, payload = x_anylabeling_request("keras_unet", data_uri(IMAGE), conf=entry["params"]["threshold"])
    usual = client.post("/v1/segment", json=payload, headers=auth()).json()["data"]["pixels"]
    settings = dataclasses.replace(predictor().config.postprocess, threshold=0.9, thresholds={})
    assert strict["rib"] == int(predictor().segment(read_image(IMAGE), settings)[1][..., 2].sum())
    assert usual["rib"] == int(expected[1][..., 2].sum()) > strict["rib"]


def test_a_missing_or_wrong_token_gets_401_and_health_needs_none(client):
    _, payload = x_anylabeling_request("keras_unet", data_uri(IMAGE))
    for headers in ({}, {"Token": ""}, {"Token": "wrong"}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/predict"), ("POST", "/v1/segment")):
            answer = client.request(method, path, json=payload, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert answer.json()["error"] == {"code": "UNAUTHORIZED", "message": "missing or wrong API key (send "
                                              "it in the Token header)"}
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"


def test_bodies_and_images_over_the_limits_get_413_before_decoding(monkeypatch):
    app, _ = make_app(max_bytes=200_000, max_pixels=100_000)
    import keras_unet.io.images as images

    def no_decoding(*args):
        raise AssertionError("decoded an image over the limit")

    with TestClient(app) as small:
        over = small.post("/v1/predict", content=b"{" + b" " * 300_000 + b"}", headers=auth())
        assert over.status_code == 413
        assert over.json()["error"]["message"] == ("request body is 300,002 bytes, more than this server's limit of "
                                                   "200,000 (--max-bytes)")
        streamed = small.post("/v1/predict", content=iter([b" " * 150_000, b" " * 150_000]), headers=auth())
        assert streamed.status_code == 413 and "over this server's limit of 200,000" in streamed.text
        monkeypatch.setattr(images, "decode_image", no_decoding)
        for width, height, message in (
                (1000, 1000, "request image is 1000x1000 = 1,000,000 pixels, more than this server's limit of "
                             "100,000 (--max-pixels)"),
                (60000, 60000, "more than the 100,000,000 limit")):
            bomb = base64.b64encode(png_header(width, height)).decode()
            answer = small.post("/v1/predict", json={"model": "keras_unet", "image": bomb}, headers=auth())
            assert answer.status_code == 413, answer.text
            assert message in answer.json()["error"]["message"]


@pytest.mark.parametrize("body, status, message", [
    ({"model": "keras_unet", "image": "data:image/png;base64,AAAA"}, 400,
     "request image: not an image (unrecognised file format)"),
    ({"model": "keras_unet", "image": "data:image/png;base64,%%%"}, 400, "\"image\" is not valid base64"),
    ({"model": "keras_unet", "image": "data:image/png,plain"}, 400,
     "\"image\" data URI is not base64-encoded (expected data:<type>;base64,...)"),
    ({"model": "keras_unet"}, 400, "\"image\" must be a non-empty string: a data URI (data:image/png;base64,...) "
                                   "or base64"),
    ({"image": "AAAA"}, 400, "\"model\" is missing; GET /v1/models lists the model ids"),
    ({"model": "yolo", "image": "AAAA"}, 404, "model 'yolo' not served here; this server serves 'keras_unet'"),
    ({"model": "keras_unet", "image": "AAAA", "params": {"conf_threshold": 1.5}}, 400,
     "threshold must be between 0 and 1, got 1.5"),
    ({"model": "keras_unet", "image": "AAAA", "params": {"filter_classes": ["femur"]}}, 400,
     "class(es) femur not predicted by this model (it predicts left_clavicle, right_clavicle, rib)"),
    ([1, 2], 400, "body must be a JSON object"),
])
def test_bad_requests_get_one_line(client, body, status, message):
    answer = client.post("/v1/predict", json=body, headers=auth())
    assert answer.status_code == status
    assert answer.json() == {"success": False, "error": {"code": answer.json()["error"]["code"], "message": message}}


def test_a_truncated_png_gets_400(client):
    cut = IMAGE.read_bytes()[:5000]
    answer = client.post("/v1/predict", json={"model": "keras_unet", "image": base64.b64encode(cut).decode()},
                         headers=auth())
    assert answer.status_code == 400
    assert answer.json()["error"] == {"code": "INVALID_IMAGE",
                                      "message": "request image: truncated PNG file (no IEND chunk at the end)"}


def test_beyond_concurrency_and_queue_requests_get_503_and_the_admitted_ones_finish():
    import httpx

    base = predictor()
    held = Blocking(base.network)
    app, service = make_app(concurrency=1, queue=1, predictors=[Predictor(held, base.config, base.source)])
    _, payload = x_anylabeling_request("keras_unet", data_uri(IMAGE))

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            post = lambda: http.post("/v1/predict", json=payload, headers=auth())  # noqa: E731
            admitted = [asyncio.ensure_future(post()) for _ in range(2)]  # one running, one waiting
            while service.admission.inside < 2 or not held.started.is_set():
                await asyncio.sleep(0.01)
            refused = await post()
            health = await http.get("/health")
            held.release.set()
            return refused, health, await asyncio.gather(*admitted)

    refused, health, done = asyncio.run(burst())
    service.close()
    assert refused.status_code == 503
    assert refused.json()["error"] == {"code": "QUEUE_FULL", "message": "server busy: 2 request(s) running or "
                                                                        "waiting already; try again shortly"}
    assert health.json()["running_or_waiting"] == 2
    assert [r.status_code for r in done] == [200, 200]
    assert done[0].json() == done[1].json() and done[0].json()["data"]["shapes"]
    assert service.admission.inside == 0


def test_a_fault_in_the_model_is_a_500_with_one_line_and_the_server_goes_on(capsys):
    base = predictor()

    def broken(batch):
        raise RuntimeError("tensor arena exhausted\nsecond line")

    app, service = make_app(predictors=[Predictor(broken, base.config, base.source)])
    _, payload = x_anylabeling_request("keras_unet", data_uri(IMAGE))
    with TestClient(app) as faulty:
        for _ in range(2):
            answer = faulty.post("/v1/predict", json=payload, headers=auth())
            assert answer.status_code == 500
            assert answer.json()["error"] == {"code": "INFERENCE_ERROR",
                                              "message": "inference failed: tensor arena exhausted"}
    assert capsys.readouterr().err.splitlines()[-1] == "error: /v1/predict: RuntimeError: tensor arena exhausted"
    assert service.admission.inside == 0


def test_two_model_copies_answer_concurrent_requests_alike(expected):
    import httpx

    from keras_unet.infer.load import load_predictor
    from serve_fixtures import MODEL

    app, service = make_app(concurrency=2, queue=2, predictors=[load_predictor(MODEL) for _ in range(2)])
    _, payload = x_anylabeling_request("keras_unet", data_uri(IMAGE))

    async def together():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            return await asyncio.gather(*[http.post("/v1/segment", json=payload, headers=auth()) for _ in range(4)])

    answers = asyncio.run(together())
    service.close()
    assert [a.status_code for a in answers] == [200] * 4
    for answer in answers:
        masks = answer.json()["data"]["masks"]
        assert all(np.array_equal(decode_mask_png(masks[n]), expected[1][..., c]) for c, n in enumerate(masks))
