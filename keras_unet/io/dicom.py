"""Read single-frame grayscale DICOM radiographs as the library's 16-bit grayscale arrays (pydicom + numpy only).

Decoding follows the DICOM display pipeline (PS3.3 C.11): stored values -> Modality LUT (Modality LUT Sequence,
else RescaleSlope/RescaleIntercept) -> VOI LUT (VOI LUT Sequence, else the first WindowCenter/WindowWidth pair,
else the full min..max range of the image) -> 0..1 -> inverted for MONOCHROME1, so bone is bright as in
MONOCHROME2 -> uint16 0..65535, the convention of a 16-bit grayscale PNG read by `images.read_image`.
pydicom is imported on first use, so the rest of the library (and the edge runner) works without it.
"""

from __future__ import annotations

import io
import math
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from keras_unet.errors import DataError, last_line
from keras_unet.io.files import check_regular, is_file

SUFFIXES = (".dcm", ".dicom")
MAGIC_OFFSET = 128  # the preamble's length: "DICM" follows it
MAGIC = b"DICM"
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_PLUGINS = (  # transfer syntax UID prefix -> what to install to decode it
    ("1.2.840.10008.1.2.4.9", "pylibjpeg-openjpeg"),  # JPEG 2000 (.90 to .93)
    ("1.2.840.10008.1.2.4.20", "pylibjpeg-openjpeg"),  # High-Throughput JPEG 2000 (.201 to .203)
    ("1.2.840.10008.1.2.4.8", "pylibjpeg-libjpeg"),  # JPEG-LS (.80, .81)
    ("1.2.840.10008.1.2.4.5", "pylibjpeg-libjpeg"),  # JPEG baseline and extended (.50, .51, .57)
    ("1.2.840.10008.1.2.4.70", "pylibjpeg-libjpeg"),  # JPEG lossless
)


def has_magic(data: bytes) -> bool:
    """Whether file bytes carry the DICOM Part 10 marker 'DICM' after the 128-byte preamble."""
    return data[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC


def has_suffix(path) -> bool:
    """Whether a file name ends in .dcm or .dicom (any case)."""
    return Path(str(path)).suffix.lower() in SUFFIXES


def is_dicom(data: bytes, source) -> bool:
    """Whether image bytes are to be read as DICOM: the 'DICM' marker, or a .dcm/.dicom file name."""
    return has_magic(data) or has_suffix(source)


def is_dicom_file(path) -> bool:
    """Whether a file is DICOM by its name or its first bytes (reads 132 bytes at most)."""
    if has_suffix(path):
        return True
    if not is_file(path):  # a FIFO or device is never opened: reading it could block
        return False
    try:
        with open(path, "rb") as handle:
            return has_magic(handle.read(MAGIC_OFFSET + len(MAGIC)))
    except OSError:
        return False


def parse(data: bytes, source, pixels: bool = True):
    """The pydicom Dataset of DICOM file bytes (pixels False: stop before the pixel data)."""
    pydicom = _pydicom(source)
    if not has_magic(data):
        raise DataError(source, "not a DICOM file (no 'DICM' marker at byte 128)")
    with _reading(source):
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)


def image_dimensions(dataset, source) -> tuple[int, int]:
    """(height, width) of a single-frame grayscale DICOM dataset, refusing colour and multi-frame images."""
    with _reading(source):
        _check_grayscale(dataset, source)
        rows, columns = dataset.get("Rows"), dataset.get("Columns")
        if not isinstance(rows, int) or not isinstance(columns, int):
            raise DataError(source, "DICOM file has no Rows/Columns: not an image")
        return rows, columns


def decode(dataset, source) -> np.ndarray:
    """The display-ready uint16 (H, W) image of a DICOM dataset: Modality LUT, VOI LUT, MONOCHROME1 inverted."""
    image_dimensions(dataset, source)
    with _reading(source):
        unit = voi_unit(modality_values(dataset, source), dataset, source)
        if str(dataset.PhotometricInterpretation).strip() == "MONOCHROME1":
            unit = 1.0 - unit
        return np.round(unit * 65535.0).astype(np.uint16)


def stored_values(dataset, source) -> np.ndarray:
    """The stored pixel values, decoded (refusing compressed transfer syntaxes no installed plugin decodes)."""
    if "PixelData" not in dataset:
        raise DataError(source, f"DICOM file has no pixel data ({_sop_class(dataset)})")
    syntax = _transfer_syntax(dataset)
    _check_decodable(syntax, source)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # decoders and plugins raise many types
        raise DataError(source, f"{_syntax_name(syntax)} pixel data cannot be decoded ({last_line(error)})") from None
    if pixels.ndim != 2:
        raise DataError(source, f"DICOM pixel data has shape {pixels.shape}; expected one 2-D grayscale frame")
    return pixels


def modality_values(dataset, source) -> np.ndarray:
    """Stored values through the Modality LUT (LUT Sequence, else RescaleSlope/Intercept) as float64."""
    from pydicom.pixels import apply_modality_lut

    pixels = stored_values(dataset, source)
    try:
        return np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    except Exception as error:
        raise DataError(source, f"cannot apply the DICOM Modality LUT ({last_line(error)})") from None


def voi_unit(values: np.ndarray, dataset, source) -> np.ndarray:
    """Modality values through the VOI LUT (LUT Sequence, else window, else min..max) to float64 in 0..1."""
    if dataset.get("VOILUTSequence"):
        return _voi_lut_sequence(values, dataset, source)
    window = window_of(dataset)
    if window is not None:
        return apply_window(values, *window, function=str(dataset.get("VOILUTFunction", "LINEAR")).strip())
    return full_range(values)


def window_of(dataset) -> tuple[float, float] | None:
    """(center, width) of the first WindowCenter/WindowWidth pair, or None when absent or unusable."""
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if center is None or width is None or not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        return None
    return center, width


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A VOI window as PS3.3 C.11.2.1.2 defines it (LINEAR, LINEAR_EXACT or SIGMOID), to float64 in 0..1."""
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # LINEAR with width 1: a threshold at center - 0.5
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def full_range(values: np.ndarray) -> np.ndarray:
    """The image's own min..max mapped linearly to 0..1 (all zeros for a flat image)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - low) / (high - low)


def pixel_spacing(dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None if absent or unusable."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = _spacing_value(dataset.get(keyword))
        if spacing is not None:
            return spacing
    return None


def read_spacing(source) -> tuple[float, float] | None:
    """Pixel spacing (row, column) in mm of a DICOM file (a path or its bytes), read from the header only."""
    if isinstance(source, (bytes, bytearray)):
        name, dataset = "imageData", parse(bytes(source), "imageData", pixels=False)
    else:
        name = source
        check_regular(source)  # pydicom opens the path itself: never a FIFO or device
        with _reading(source):
            dataset = _pydicom(source).dcmread(str(source), stop_before_pixels=True)
    with _reading(name, "read the DICOM pixel spacing"):
        return pixel_spacing(dataset)


# -- helpers -----------------------------------------------------------------------------------------------


def _pydicom(source):
    try:
        import pydicom
    except ImportError:
        raise DataError(source, "reading DICOM files needs pydicom: pip install pydicom") from None
    return pydicom


@contextmanager
def _reading(source, what: str = "read the DICOM file"):
    """Quiet pydicom's warnings, and turn its exceptions (a broken file raises many types) into one DataError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except DataError:
        raise
    except Exception as error:
        raise DataError(source, f"cannot {what} ({last_line(error)})") from None


def _check_grayscale(dataset, source) -> None:
    frames = dataset.get("NumberOfFrames")
    try:
        frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise DataError(source, f"multi-frame DICOM ({frames} frames); only single-frame images can be read")
    samples = dataset.get("SamplesPerPixel", 1)
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in GRAYSCALE:
        raise DataError(source, f"colour DICOM ({photometric or 'no PhotometricInterpretation'}, {samples} samples "
                                "per pixel); only grayscale MONOCHROME1/MONOCHROME2 images can be read")


def _transfer_syntax(dataset):
    from pydicom.uid import UID

    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(syntax)) if syntax else None


def _syntax_name(syntax) -> str:
    if syntax is None:
        return "DICOM (no transfer syntax)"
    return f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else f"transfer syntax {syntax}"


def _check_decodable(syntax, source) -> None:
    if syntax is None:
        return
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise DataError(source, f"{_syntax_name(syntax)} cannot be decoded here: install {_plugin_for(syntax)} "
                                "or convert to uncompressed")


def _plugin_for(syntax) -> str:
    for prefix, plugin in _PLUGINS:
        if str(syntax).startswith(prefix):
            return plugin
    return "a pydicom decoding plugin (pylibjpeg, gdcm)"


def _voi_lut_sequence(values: np.ndarray, dataset, source) -> np.ndarray:
    from pydicom.pixels import apply_voi

    item = dataset.VOILUTSequence[0]
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        entries = entries or 65536
        indices = np.clip(np.round(values), first, first + entries - 1).astype(np.int64)
        out = apply_voi(indices, dataset)
    except Exception as error:
        raise DataError(source, f"cannot apply the DICOM VOI LUT Sequence ({last_line(error)})") from None
    return np.asarray(out, dtype=np.float64) / float(2**bits - 1)


def _numbers(value) -> list[float] | None:
    """A DICOM numeric element's values (one or many) as floats, or None when absent or not numbers."""
    if value is None or value == "":
        return None
    values = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def _first(value) -> float | None:
    numbers = _numbers(value)
    return numbers[0] if numbers else None


def _spacing_value(value) -> tuple[float, float] | None:
    numbers = _numbers(value)
    if numbers and len(numbers) == 1:
        numbers = numbers * 2
    if not numbers or len(numbers) != 2 or not all(math.isfinite(v) and v > 0 for v in numbers):
        return None
    return numbers[0], numbers[1]


def _sop_class(dataset) -> str:
    uid = dataset.get("SOPClassUID") or getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", None)
    if not uid:
        return "no PixelData element"
    name = getattr(uid, "name", str(uid))
    return f"no PixelData element; SOP class {name}"
