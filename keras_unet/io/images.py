"""Read any X-ray image file (DICOM too) as one 2-D grayscale array, and write PNGs atomically (numpy + OpenCV)."""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from keras_unet.errors import DataError, KerasUnetError, last_line
from keras_unet.io import dicom
from keras_unet.io.files import check_regular, is_file, read_bytes, write_bytes_atomic

MAX_PIXELS = 100_000_000  # images with more pixels than this are refused (about 10000 x 10000)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *dicom.SUFFIXES)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112  # values 5 to 8 turn the picture by 90 degrees: height and width swap


def read_image(path) -> np.ndarray:
    """Read an image file as a 2-D grayscale array: uint8 or uint16 (uint16 for DICOM, float32 for float TIFFs)."""
    return decode_image(read_bytes(path), path)


def is_image_file(path) -> bool:
    """Whether a folder entry is an image to read: a known suffix, or DICOM's 'DICM' marker (hidden files excluded).

    Only regular files are opened to look for the marker; a FIFO, device or socket with an image suffix counts,
    so that reading it names the problem."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    if stat.S_ISDIR(mode):
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return stat.S_ISREG(mode) and dicom.is_dicom_file(path)


def list_images(path, recursive: bool = False, skip=(), purpose: str = "") -> list[Path]:
    """An image file as a one-item list, or a folder's image files (DICOM of any name too), sorted.

    recursive: subfolders too, except hidden ones and those named in skip; purpose names the use in errors.
    A FIFO, device or socket given as the input is refused; in a folder, those with an image suffix are listed
    (reading one raises a DataError naming it) and the others are left out unopened."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "input not found")
    if not path.is_dir():
        check_regular(path)
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
    with decoding(source if not isinstance(source, (bytes, bytearray)) else "imageData", "read the pixel spacing"):
        if isinstance(source, (bytes, bytearray)):
            return dicom.read_spacing(source) if dicom.has_magic(source) else None
        return dicom.read_spacing(source) if is_file(source) and dicom.is_dicom_file(source) else None



def decode_image(data: bytes, source) -> np.ndarray:
    """Decode image file bytes as a 2-D grayscale array; `source` names the file in errors."""
    with decoding(source):
        return _decode_image(data, source)


@contextmanager
def decoding(source, what: str = "decode the image"):
    """Whatever a decoder raises (OpenCV, Pillow, pydicom: any type, a MemoryError too) as one DataError naming
    the file."""
    try:
        yield
    except KerasUnetError:
        raise
    except MemoryError:
        raise DataError(source, f"cannot {what}: it needs more memory than there is (corrupt size fields?)") from None
    except Exception as error:
        raise DataError(source, f"cannot {what} ({type(error).__name__}: {last_line(error)[:200]})") from None


def _decode_image(data: bytes, source) -> np.ndarray:
    if len(data) == 0:
        raise DataError(source, "empty file (0 bytes), not an image")
    if dicom.is_dicom(data, source):
        return _decode_dicom(data, source)
    kind = _sniff(data)
    if kind is None:
        raise DataError(source, "not an image (unrecognised file format)")
    size = _header_size(data, source)
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
    with decoding(source, "read the image's size"):
        return _image_dimensions(data, source)


def _image_dimensions(data: bytes, source) -> tuple[int, int]:
    if data and dicom.is_dicom(data, source):
        size = dicom.image_dimensions(dicom.parse(data, source, pixels=False), source)
        _check_size(*size, source)
        return size
    size = _header_size(data, source) if data else None
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







def _header_size(data: bytes, source) -> tuple[int, int] | None:
    """(height, width) as Pillow reads it from the header alone (EXIF orientation applied), or None if it cannot."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked next
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                turned = image.format == "JPEG" and image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except Image.DecompressionBombError:
        raise DataError(source, f"image has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's "
                                f"decompression-bomb guard), more than the {MAX_PIXELS:,} limit") from None
    except Exception:  # a header Pillow refuses (a 0-pixel PNG, say), or a format it does not read
        return _png_header_size(data)
    return (width, height) if turned else (height, width)


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR fields, for headers Pillow refuses (None for other formats)."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _truncation(data: bytes, kind: str) -> str | None:
    """A one-line problem when the file's bytes end before the image does, else None."""
    if kind == "png" and data.rfind(b"IEND", max(0, len(data) - 4096)) < 0:
        return "truncated PNG file (no IEND chunk at the end)"
    if kind == "jpeg":
        scan = data.rfind(b"\xff\xda")  # the last start-of-scan (entropy-coded data never holds FF DA)
        if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
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
