"""Geometric test-time augmentation on square network inputs: shifted and zoomed views, and their outputs
mapped back and averaged. numpy and OpenCV only.

A view is a 2x3 affine map of network-input pixels (`view_matrices`): the input is warped by it (zero outside,
as training's augmentation fills), the network's output is warped back by its inverse, and each pixel's mean
(`merge_views`) is taken over the views that saw it (a shifted view's output is missing along one edge).
The horizontal flip with its left_*/right_* channel swap stays in `infer.predictor`.
"""

from __future__ import annotations

import cv2
import numpy as np


def view_matrices(size: int, shift: float = 0.0, scales=()) -> list[np.ndarray]:
    """The extra views' 2x3 maps for a size x size input: shifts of shift x size pixels up, down, left and right
    (none when shift is 0), then a zoom about the centre by each factor of scales."""
    centre = (size - 1) / 2.0
    pixels = shift * size
    moves = [(1.0, 0.0, -pixels), (1.0, 0.0, pixels), (1.0, -pixels, 0.0), (1.0, pixels, 0.0)] if shift else []
    moves += [(float(s), 0.0, 0.0) for s in scales]
    return [np.array([[s, 0.0, centre * (1.0 - s) + dx], [0.0, s, centre * (1.0 - s) + dy]], np.float64)
            for s, dy, dx in moves]


def warp(array: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(S, S, C) float32 array moved by the 2x3 map (bilinear, zero where it comes from outside)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    size = (a.shape[1], a.shape[0])
    if a.ndim == 3 and a.shape[2] > 4:  # OpenCV's warpAffine takes at most 4 channels at once
        return np.stack([warp(a[..., c], matrix) for c in range(a.shape[2])], axis=-1)
    out = cv2.warpAffine(a, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(a.shape)


def merge_views(plain: np.ndarray, outputs, matrices) -> np.ndarray:
    """(S, S, C) mean of the plain output and each view's output mapped back by its map's inverse, each pixel
    averaged over the views that cover it."""
    total = np.array(plain, dtype=np.float32, copy=True)
    weight = np.ones(plain.shape[:2], np.float32)
    ones = np.ones(plain.shape[:2], np.float32)
    for out, matrix in zip(outputs, matrices):
        back = cv2.invertAffineTransform(matrix)
        total += warp(out, back).reshape(total.shape)  # zero where the view did not see: its cover is 0 there
        weight += warp(ones, back)  # bilinear edges: a pixel half seen counts half, its value is half too
    return total / weight.reshape(*weight.shape, *([1] * (total.ndim - 2)))
