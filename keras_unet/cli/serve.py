"""`keras-unet serve --model RUN_OR_EXPORT`: a model server for annotation tools (X-AnyLabeling's remote-server
protocol: GET /v1/models, POST /v1/predict) and other clients (POST /v1/segment, GET /health).

Binds 127.0.0.1:8000 (X-AnyLabeling's default server) unless told otherwise; any other address needs --token. Needs
the `serve` extra: pip install 'keras_unet[serve]'."""

from __future__ import annotations

import argparse
import os

from keras_unet.cli.common import add_debug_option, add_inference_options, run_main
from keras_unet.config import PostprocessConfig
from keras_unet.errors import KerasUnetError, first_line
from keras_unet.infer.predictor import postprocess_settings

TOKEN_ENV = "KERAS_UNET_SERVE_TOKEN"


def parse_args(argv):
    """The parsed command line."""
    from keras_unet.serve.server import DEFAULT_HOST, DEFAULT_PORT
    from keras_unet.serve.service import (DEFAULT_CONCURRENCY, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS,
                                          DEFAULT_MODEL_ID, DEFAULT_QUEUE)

    p = argparse.ArgumentParser(prog="keras-unet serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_options(p)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this "
                   "machine only; any other needs --token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                   help=f"API key every /v1 request must carry in its Token header (default: ${TOKEN_ENV})")
    p.add_argument("--concurrency", "--workers", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"requests segmented at once, each with its own copy of the model (default "
                        f"{DEFAULT_CONCURRENCY})")
    p.add_argument("--queue", type=int, default=DEFAULT_QUEUE, help="requests that may wait beyond those; more "
                   f"get 503 (default {DEFAULT_QUEUE})")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"largest request body in bytes (default {DEFAULT_MAX_BYTES:,}); larger gets 413")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest image in pixels (default {DEFAULT_MAX_PIXELS:,}); larger gets 413")
    p.add_argument("--model-id", default=DEFAULT_MODEL_ID, help=f"the id clients choose the model by (default "
                   f"{DEFAULT_MODEL_ID})")
    add_debug_option(p)
    return p.parse_args(argv)


def require_extra() -> None:
    """KerasUnetError in one line when FastAPI or uvicorn (the `serve` extra) cannot be imported."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise KerasUnetError(f"the model server needs FastAPI and uvicorn ({first_line(exc)}): "
                             "pip install 'keras_unet[serve]'") from None


def run(argv, log=print) -> int:
    """Serve the model until interrupted."""
    args = parse_args(argv)
    require_extra()
    from keras_unet.serve.app import create_app
    from keras_unet.serve.server import check_bind, listen, run as run_server, url_of
    from keras_unet.serve.service import Limits, load_service

    limits = Limits(args.concurrency, args.queue, args.max_bytes, args.max_pixels).checked()
    token = args.token.strip() if args.token else None
    check_bind(args.host, token)
    postprocess_settings(PostprocessConfig(), threshold=args.threshold)  # a bad --threshold stops here
    sock = listen(args.host, args.port)
    try:
        service = load_service(args.model, lambda base: postprocess_settings(
            base, enabled=not args.no_postprocess, tta=not args.no_tta, threshold=args.threshold),
            limits, args.model_id, refine=not args.no_refine, log=log)
        url = url_of(sock)
        log(f"serving {args.model_id!r} at {url} (token {'required' if token else 'off'}); X-AnyLabeling: "
            f"Remote-Server, server URL {url}; GET {url}/health; Ctrl+C stops")
        try:
            run_server(create_app(service, token), sock,
                       connections=max(64, 4 * (limits.concurrency + limits.queue)))
        finally:
            service.close()
            log("server stopped")
    finally:
        sock.close()
    return 0


def main(argv=None) -> int:
    """The command line: exit code 130 when stopped by Ctrl+C, 2 for an error (one line on stderr)."""
    return run_main(run, argv)
