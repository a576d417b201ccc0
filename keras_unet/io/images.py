"""Read any X-ray image file (DICOM too) as one 2-D grayscale array, and write PNGs atomically (numpy + OpenCV)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from keras_unet.errors import DataError, last_line
from keras_unet.io import dicom
from keras_unet.io.files import read_bytes, write_bytes_atomic

MAX_PIXELS = 100_000_000  # images with more pixels than this are refused (about 10000 x 10000)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *dicom.SUFFIXES)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


def read_image(path) -> np.ndarray:
    """Read an image file as a 2-D grayscale array: uint8 or uint16 (uint16 for DICOM, float32 for float TIFFs)."""
    return decode_image(read_bytes(path), path)


def is_image_file(path) -> bool:
    """Whether a folder entry is an image to read: a known suffix, or DICOM's 'DICM' marker (hidden files excluded)."""
    path = Path(path)
    if path.name.startswith(".") or not path.is_file():
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or dicom.is_dicom_file(path)


def list_images(path, recursive: bool = False, skip=(), purpose: str = "") -> list[Path]:
    """An image file as a one-item list, or a folder's image files (DICOM of any name too), sorted.

    recursive: subfolders too, except hidden ones and those named in skip; purpose names the use in errors."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "input not found")
    if path.is_file():
        return [path]
    found = []
    for root, folders, files in os.walk(path):
        folders[:] = sorted(d for d in folders if recursive and not d.startswith(".") and d not in skip)
        found += [Path(root) / name for name in files if is_image_file(Path(root) / name)]
    if not found:
        where = "in this folder or its subfolders" if recursive else "in this folder"
        use = f" for {purpose}" if purpose else ""
        raise DataError(path, f"no image files ({', '.join(IMAGE_SUFFIXES)}, or DICOM){use} {where}")
    return sorted(found)


def float_to_uint16(image: np.ndarray) -> np.ndarray:
    """A floating-point image linearly rescaled from its finite min..max to 0..65535 (non-finite pixels: 0)."""
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, dtype=np.uint16)
    low, high = float(image[finite].min()), float(image[finite].max())
    scaled = (np.where(finite, image, low) - low) / ((high - low) or 1.0)
    return np.round(scaled * 65535).astype(np.uint16)


def read_spacing(source) -> tuple[float, float] | None:
    """Pixel spacing (row, column) in mm of a DICOM image (a path or its bytes); None for other formats."""
    if isinstance(source, (bytes, bytearray)):
        return dicom.read_spacing(source) if dicom.has_magic(source) else None
    return dicom.read_spacing(source) if dicom.is_dicom_file(source) else None



def decode_image(data: bytes, source) -> np.ndarray:
    """Decode image file bytes as a 2-D grayscale array; `source` names the file in errors."""
    if len(data) == 0:
        raise DataError(source, "empty file (0 bytes), not an image")
    if dicom.is_dicom(data, source):
        return _decode_dicom(data, source)
    kind = _sniff(data)
    if kind is None:
        raise DataError(source, "not an image (unrecognised file format)")
    size = _header_size(data, kind)
    if size is not None:
        _check_size(size[0], size[1], source)
    truncated = _truncation(data, kind)
    if truncated:
        raise DataError(source, truncated)
    # JPEGs are decoded the way Labelme shows them: with their EXIF orientation applied.
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if kind == "jpeg" else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as error:
        raise DataError(source, f"cannot decode the {kind.upper()} image ({last_line(error)})") from None
    if image is None:
        raise DataError(source, f"cannot decode the {kind.upper()} image (corrupt or truncated)")
    if image.size == 0:
        raise DataError(source, "image has 0 pixels")
    _check_size(image.shape[0], image.shape[1], source)
    return _to_gray(image, source)


def image_dimensions(data: bytes, source) -> tuple[int, int]:
    """(height, width) of an image file's bytes, read from the header where the format allows."""
    if data and dicom.is_dicom(data, source):
        size = dicom.image_dimensions(dicom.parse(data, source, pixels=False), source)
        _check_size(*size, source)
        return size
    kind = _sniff(data) if data else None
    size = _header_size(data, kind) if kind else None
    if size is None or size[0] <= 0 or size[1] <= 0:
        image = decode_image(data, source)
        return int(image.shape[0]), int(image.shape[1])
    _check_size(size[0], size[1], source)
    return size


def is_gray_png(data: bytes) -> bool:
    """Whether image bytes are a PNG that decodes as-is to 8- or 16-bit single-channel pixels."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    bit_depth, color_type = data[24], data[25]
    return color_type == 0 and bit_depth in (8, 16) and b"tRNS" not in data[33 : data.find(b"IDAT")]


def write_png(path, array: np.ndarray, durable: bool = False) -> None:
    """Write a uint8 or uint16 array (H, W) or (H, W, C) as a PNG atomically (durable: fsync it too)."""
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png takes uint8 or uint16 arrays, not {array.dtype}")
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(f"write_png takes a non-empty (H, W) or (H, W, C) array, not shape {array.shape}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise DataError(path, "OpenCV could not encode the PNG")
    write_bytes_atomic(path, encoded.tobytes(), durable)



def _decode_dicom(data: bytes, source) -> np.ndarray:
    dataset = dicom.parse(data, source)
    _check_size(*dicom.image_dimensions(dataset, source), source)
    return dicom.decode(dataset, source)



def _check_size(height: int, width: int, source) -> None:
    if height <= 0 or width <= 0:
        raise DataError(source, f"image has 0 pixels ({width}x{height})")
    if height * width > MAX_PIXELS:
        raise DataError(
            source, f"image is {width}x{height} = {height * width:,} pixels, more than the {MAX_PIXELS:,} limit"
        )


def _sniff(data: bytes) -> str | None:
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"BM"):
        return "bmp"
    return _other_format(data)


def _other_format(data: bytes) -> str | None:
    # Formats OpenCV may still read; no header parsing for them.
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
        return "pnm"
    if data.startswith(b"\x00\x00\x00\x0cjP  ") or data.startswith(b"\xff\x4f\xff\x51"):
        return "jpeg2000"
    return None


def _header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(height, width) from the file header, or None when not cheaply known."""
    try:
        if kind == "png":
            if len(data) >= 24 and data[12:16] == b"IHDR":
                width, height = struct.unpack(">II", data[16:24])
                return height, width
        elif kind == "bmp":
            return _bmp_size(data)
        elif kind == "jpeg":
            return _jpeg_size(data)
        elif kind == "tiff":
            return _tiff_size(data)
    except (struct.error, IndexError):
        return None
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(height), abs(width)


def _jpeg_segments(data: bytes):
    """Yield (marker, offset of the segment's length field) up to the first start-of-scan."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        yield marker, i + 2
        if marker == 0xDA:
            return
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + length


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    for marker, at in _jpeg_segments(data):
        if marker == 0xE1 and data[at + 2 : at + 8] == b"Exif\x00\x00":
            return None  # an orientation tag may swap the sides: let the decoder say
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[at + 3 : at + 7])
            return height, width
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    if data[2:4] not in (b"*\x00", b"\x00*"):
        return None  # BigTIFF: leave to the decoder
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    found = {}
    for k in range(count):
        entry = data[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8 : 10 if kind == 3 else 12])[0]
    if 256 in found and 257 in found:
        return found[257], found[256]
    return None


def _truncation(data: bytes, kind: str) -> str | None:
    """A one-line problem when the file's bytes end before the image does, else None."""
    if kind == "png" and data.rfind(b"IEND", max(0, len(data) - 4096)) < 0:
        return "truncated PNG file (no IEND chunk at the end)"
    if kind == "jpeg":
        scan = None
        for marker, at in _jpeg_segments(data):
            if marker == 0xDA:
                scan = at
        if scan is None or data.find(b"\xff\xd9", scan) < 0:
            return "truncated JPEG file (no end-of-image marker after the image data)"
    if kind == "bmp" and len(data) >= 6:
        (declared,) = struct.unpack("<I", data[2:6])
        if 54 <= declared and len(data) < declared:
            return f"truncated BMP file ({len(data)} of {declared} bytes)"
    return None


def _to_gray(image: np.ndarray, source) -> np.ndarray:
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        image = image.astype(np.float32)  # signed or 32-bit integers, doubles: keep the values as floats
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 2:  # gray + alpha
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            raise DataError(source, f"image has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    elif image.ndim != 2:
        raise DataError(source, f"image has {image.ndim} dimensions; expected a 2-D picture")
    return np.ascontiguousarray(image)
