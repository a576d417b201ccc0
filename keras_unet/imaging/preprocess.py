"""Image preparation in numpy/OpenCV (inference, edge runner); `data.py` does the same in TensorFlow ops."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

EPSILON = 1e-6


def percentile_index(q: float, n: int) -> int:
    """Nearest-rank index of percentile q (0-100) in a sorted array of n values."""
    return int(np.floor(q / 100.0 * (n - 1) + 0.5))


def grid_step(height: int, width: int, grid: int) -> int:
    """Stride of the pixel grid on which intensity percentiles are read."""
    return max(1, max(height, width) // max(grid, 1))


def intensity_window(image: np.ndarray, method: str = "percentile", low: float = 1.0, high: float = 99.0,
                     grid: int = 256) -> tuple[float, float]:
    """Intensities mapped to 0 and 1 by the normalisation method."""
    x = np.asarray(image)
    if method == "none":
        top = 65535.0 if image.dtype == np.uint16 else 255.0 if image.dtype == np.uint8 else 1.0
        return 0.0, top
    step = grid_step(*x.shape[:2], grid)
    sample = np.sort(x[::step, ::step].astype(np.float32).ravel())  # only the sample in float
    if method == "minmax":
        return float(sample[0]), float(sample[-1])
    n = sample.size
    return float(sample[percentile_index(low, n)]), float(sample[percentile_index(high, n)])


def normalize(image: np.ndarray, normalization) -> np.ndarray:
    """Grayscale image to float32 in [0, 1] by a NormalizationConfig."""
    lo, hi = intensity_window(image, normalization.method, normalization.low, normalization.high,
                              normalization.sample_grid)
    x = (np.asarray(image, dtype=np.float32) - np.float32(lo)) / np.float32(max(hi - lo, EPSILON))
    return np.clip(x, 0.0, 1.0)


@dataclass(frozen=True)
class Letterbox:
    """Where an image of (height, width) sits inside the square network input of side `size`."""

    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def inner(self) -> tuple[int, int]:
        """(height, width) of the resized image inside the square."""
        return (max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale)))

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) padding."""
        h, w = self.inner
        return ((self.size - h) // 2, (self.size - w) // 2)


def resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area resize when shrinking, bilinear when enlarging (as tf.image.resize does in data.py)."""
    if (height, width) == array.shape[:2]:
        return array.copy()
    shrinking = height * width < array.shape[0] * array.shape[1]
    out = cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out.reshape(height, width, *array.shape[2:])


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and zero-pad to size x size; returns the placement too."""
    box = Letterbox(image.shape[0], image.shape[1], size)
    h, w = box.inner
    top, left = box.offset
    out = np.zeros((size, size, *image.shape[2:]), dtype=np.float32)
    out[top:top + h, left:left + w] = resize(np.asarray(image, dtype=np.float32), h, w)
    return out, box


def unletterbox(array: np.ndarray, box: Letterbox) -> np.ndarray:
    """Crop the padding off a network-size (size, size, C) output and resize it to the original image size."""
    h, w = box.inner
    top, left = box.offset
    crop = np.ascontiguousarray(array[top:top + h, left:left + w])
    if crop.ndim == 3 and crop.shape[2] > 4:  # OpenCV resizes at most 4 channels at once with INTER_LINEAR
        return np.stack([cv2.resize(crop[..., c], (box.width, box.height), interpolation=cv2.INTER_LINEAR)
                         for c in range(crop.shape[2])], axis=-1)
    out = cv2.resize(crop, (box.width, box.height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(box.height, box.width, *crop.shape[2:])


def prepare(image: np.ndarray, config, normalized: bool = False) -> tuple[np.ndarray, Letterbox]:
    """Raw (or, with normalized, already [0, 1]) grayscale image to a (size, size, 1) float32 network input."""
    x = np.asarray(image, dtype=np.float32) if normalized else normalize(image, config.normalization)
    x, box = letterbox(x, config.image_size)
    return x[..., None], box
