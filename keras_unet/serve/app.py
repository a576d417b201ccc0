"""The web application (FastAPI) of `keras-unet serve`: X-AnyLabeling's remote-server protocol, a health endpoint
and a plain segmentation endpoint, in front of a `service.ModelService`.

Endpoints
- `GET /health`: {"status": "healthy", "models_loaded", "running_or_waiting", ...}; never needs the token.
- `GET /v1/models`: {"success": true, "data": {model_id: {"display_name", "classes", "widgets", "params"}}}.
- `POST /v1/predict`: {"model": id, "image": "data:image/png;base64,...", "params": {...}} ->
  {"success": true, "data": {"shapes": [{"label", "shape_type", "points", "score", ...}], "replace": true}}.
- `POST /v1/segment`: the same JSON (model optional), or the image file itself as the body (a non-JSON
  Content-Type, or none and a body that does not start with '{') -> data with the shapes plus "masks" {class: data URI of a 0/255 PNG}, "pixels", "height", "width".

Refusals carry {"success": false, "error": {"code", "message"}}: 401 without the token (header `Token`) when one is
set, 413 for a body over max_bytes (Content-Length checked before reading, and the bytes counted while reading) or
an image over max_pixels (read from its header before decoding), 400 for malformed JSON or a bad image, 404 for an
unknown model id, 503 when concurrency + queue requests are inside already.
"""

from __future__ import annotations

import hmac
import json
import sys
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from keras_unet import __version__
from keras_unet.errors import first_line
from keras_unet.serve import protocol
from keras_unet.serve.service import ModelService

TOKEN_HEADER = "Token"


def create_app(service: ModelService, token: str | None = None) -> FastAPI:
    """The FastAPI application serving one ModelService; token: the API key every /v1 request must carry."""
    app = FastAPI(title="keras_unet model server", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service
    started = time.time()

    @app.exception_handler(protocol.RequestError)
    async def refused(request: Request, exc: protocol.RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    def check_token(request: Request) -> None:
        if token and not hmac.compare_digest(request.headers.get(TOKEN_HEADER, "").encode(), token.encode()):
            raise protocol.RequestError(401, "UNAUTHORIZED", f"missing or wrong API key (send it in the "
                                                             f"{TOKEN_HEADER} header)")

    @app.get("/health")
    async def health():
        return {"status": "healthy", "models_loaded": 1, "model": service.model_id, "version": __version__,
                "running_or_waiting": service.admission.inside, "concurrency": service.limits.concurrency,
                "queue": service.limits.queue, "uptime_s": round(time.time() - started, 1)}

    @app.get("/v1/models")
    async def models(request: Request):
        check_token(request)
        return {"success": True, "data": {service.model_id: service.info()}}

    @app.post("/v1/predict")
    async def predict(request: Request):
        check_token(request)
        return await _answer(request, service, masks=False)

    @app.post("/v1/segment")
    async def segment(request: Request):
        check_token(request)
        return await _answer(request, service, masks=True)

    return app


async def _answer(request, service: ModelService, masks: bool) -> JSONResponse:
    """Admit the request, read and parse its body within the limits, segment on a worker thread."""
    with service.admission.enter():
        body = await read_body(request, service.limits.max_bytes)
        raw = masks and not _is_json(request, body)
        data, params, model = (body, {}, None) if raw else await run_in_threadpool(_parse, body)
        if model is None and not masks:
            raise protocol.bad_request("\"model\" is missing; GET /v1/models lists the model ids")
        if model is not None and model != service.model_id:
            raise protocol.RequestError(404, "MODEL_NOT_FOUND", f"model {model!r} not served here; this server "
                                                                f"serves {service.model_id!r}")
        settings, classes = service.request_settings(params)
        try:
            answer = await service.submit(data, settings, classes, masks)
        except protocol.RequestError:
            raise
        except Exception as exc:  # a fault in the model or the runtime: one line back and on stderr
            print(f"error: {request.url.path}: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
            raise protocol.RequestError(500, "INFERENCE_ERROR", f"inference failed: {first_line(exc)}") from None
    return JSONResponse({"success": True, "data": answer})  # plain JSON types already: no jsonable_encoder pass


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over limit bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise protocol.bad_request(f"bad Content-Length {declared!r}")
        if int(declared) > limit:
            raise protocol.too_large(f"request body is {int(declared):,} bytes, more than this server's limit of "
                                     f"{limit:,} (--max-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise protocol.too_large(f"request body is over this server's limit of {limit:,} bytes (--max-bytes)")
        chunks.append(chunk)
    if not size:
        raise protocol.bad_request("empty request body")
    return b"".join(chunks)


def _is_json(request, body: bytes) -> bool:
    """Whether a body is JSON: its Content-Type says so, or it has none and the body starts with '{'."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not kind:
        return body.lstrip()[:1] == b"{"
    return kind == "application/json" or kind.endswith("+json")


def _parse(body: bytes) -> tuple[bytes, object, object]:
    """(image bytes, params, model) of a JSON body (parsed off the event loop: a large body takes a while)."""
    document = _json(body)
    return protocol.image_bytes(document.get("image")), document.get("params"), document.get("model")


def _json(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise protocol.bad_request(f"body is not valid JSON ({first_line(exc)})") from None
    if not isinstance(document, dict):
        raise protocol.bad_request("body must be a JSON object")
    return document
