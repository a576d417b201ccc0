"""The model server's requests and answers as plain data (no web framework): the image a request carries, decoded
within the server's limits, and the shapes and masks sent back.

An image travels as a data URI (`data:image/png;base64,...`, X-AnyLabeling's form) or bare base64; its bytes are
sniffed, not trusted to the MIME type (X-AnyLabeling labels any file it does not know as image/jpeg), so PNG (8 or
16 bit), JPEG, TIFF, BMP, WebP and DICOM all work. The pixel count is read from the header and checked before the
pixels are decoded.

Shapes follow X-AnyLabeling's remote-server answer: {"label", "shape_type": "polygon", "points": [[x, y], ...],
"score", ...}, one polygon per predicted component, in Labelme's coordinates and simplified as the Labelme
pre-annotations are (`infer.preannotate.labelme_polygons`); `score` is the class's mean probability inside the
polygon.
"""

from __future__ import annotations

import base64
import binascii
import re

import cv2
import numpy as np

from keras_unet.errors import KerasUnetError
from keras_unet.infer.preannotate import LABELME_OFFSET, labelme_polygons
from keras_unet.io import images

IMAGE_SOURCE = "request image"  # how errors name the image a request carried
_DATA_URI = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),", re.IGNORECASE)


class RequestError(KerasUnetError):
    """A request the server refuses: its HTTP status, a short code and a one-line message."""

    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = int(status), code, " ".join(str(message).split())
        super().__init__(self.message)

    def body(self) -> dict:
        """The JSON answer: {"success": false, "error": {"code", "message"}}."""
        return {"success": False, "error": {"code": self.code, "message": self.message}}


def bad_request(message: str) -> RequestError:
    """A 400 answer: the request is malformed."""
    return RequestError(400, "INVALID_REQUEST", message)


def image_bytes(value) -> bytes:
    """The file bytes of an image field: a data URI with base64 data, or bare base64 (400 otherwise)."""
    if not isinstance(value, str) or not value.strip():
        raise bad_request("\"image\" must be a non-empty string: a data URI (data:image/png;base64,...) or base64")
    text = value.strip()
    match = _DATA_URI.match(text)
    if match:
        if "base64" not in match.group(2).lower().split(";"):
            raise bad_request("\"image\" data URI is not base64-encoded (expected data:<type>;base64,...)")
        text = text[match.end():]
    try:
        data = _b64decode(text)
    except (binascii.Error, ValueError):
        raise bad_request("\"image\" is not valid base64") from None
    if not data:
        raise bad_request("\"image\" holds no bytes")
    return data


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional, line breaks allowed."""
    if any(c in text for c in " \t\r\n"):
        text = "".join(text.split())
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Image file bytes as a 2-D grayscale array: 413 above max_pixels (read from the header, before decoding),
    400 for bytes that are not a readable image."""
    try:
        height, width = images.image_dimensions(data, IMAGE_SOURCE)
    except KerasUnetError as exc:
        raise _image_refused(exc) from None
    if height * width > max_pixels:
        raise too_large(f"{IMAGE_SOURCE} is {width}x{height} = {height * width:,} pixels, more than this server's limit of "
                        f"{max_pixels:,} (--max-pixels)")
    try:
        return images.decode_image(data, IMAGE_SOURCE)
    except KerasUnetError as exc:
        raise _image_refused(exc) from None


def _image_refused(exc: KerasUnetError) -> RequestError:
    message = str(exc)
    if "limit" in message and "pixels" in message:  # the library's own MAX_PIXELS guard
        return too_large(message)
    return RequestError(400, "INVALID_IMAGE", message)


def too_large(message: str) -> RequestError:
    """A 413 answer: the body or the image is over the server's limit."""
    return RequestError(413, "TOO_LARGE", message)


def polygon_shapes(probs: np.ndarray, masks: np.ndarray, classes, digits: int = 2) -> list[dict]:
    """X-AnyLabeling shapes: one polygon per component of each class's mask, scored by its mean probability."""
    shapes = []
    for c, name in enumerate(classes):
        for polygon in labelme_polygons(masks[..., c]):
            shapes.append({
                "label": str(name),
                "shape_type": "polygon",
                "points": [[round(float(x), digits), round(float(y), digits)] for x, y in polygon],
                "score": round(polygon_score(probs[..., c], polygon), 4),
                "group_id": None,
                "description": "",
                "flags": {},
                "attributes": {},
            })
    return shapes


def polygon_score(prob: np.ndarray, polygon: np.ndarray) -> float:
    """Mean of a (H, W) probability plane over the pixels a polygon in Labelme's coordinates covers (through the
    pixel centres, pixel i spanning i .. i + 1; its bounding box only is drawn)."""
    pts = np.round(np.asarray(polygon, dtype=np.float64) - LABELME_OFFSET).astype(np.int64)
    height, width = prob.shape
    left, top = np.clip(pts.min(axis=0), 0, [width - 1, height - 1])
    right, bottom = np.clip(pts.max(axis=0), 0, [width - 1, height - 1])
    box = np.zeros((bottom - top + 1, right - left + 1), np.uint8)
    cv2.fillPoly(box, [(pts - [left, top]).astype(np.int32)], 1)
    inside = prob[top:bottom + 1, left:right + 1][box > 0]
    return float(inside.mean()) if inside.size else 0.0


def mask_png(mask: np.ndarray) -> str:
    """A 0/1 mask as a data URI of an 8-bit PNG holding 0 and 255."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8) * np.uint8(255))
    if not ok:
        raise KerasUnetError("OpenCV could not encode a mask as PNG")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def decode_mask_png(uri: str) -> np.ndarray:
    """A mask_png data URI back to a 0/1 uint8 array (for clients and tests)."""
    data = image_bytes(uri)
    return (cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
