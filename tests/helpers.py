"""A tiny trained run folder (model.keras + config.json) and blob images, shared by the inference tests."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_unet.config import Config, ModelConfig
from keras_unet.io.files import write_json_atomic
from keras_unet.model.saving import save_for_inference

CLASSES = ["left_clavicle", "right_clavicle", "rib"]  # the bundled sample's classes
SIZE = 64
LEVELS = (250, 170, 100)  # grey level of each class's blobs; the background sits near 20
_RUN: dict = {}


def blob_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image with one ellipse per class (class told by brightness) and its (H, W, C) 0/1 masks."""
    image = np.full((height, width), 20, np.uint8)
    masks = np.zeros((height, width, len(CLASSES)), np.uint8)
    for c, level in enumerate(LEVELS):
        centre = (int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.2, 0.8) * height))
        axes = (int(rng.uniform(0.08, 0.18) * width), int(rng.uniform(0.08, 0.18) * height))
        angle = float(rng.uniform(0, 180))
        plane = np.zeros((height, width), np.uint8)
        cv2.ellipse(plane, centre, axes, angle, 0, 360, 1, -1)
        masks[..., :][plane > 0] = 0
        masks[..., c] = plane
        image[plane > 0] = level
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), masks


def tiny_config() -> Config:
    """Settings of the tiny run: 64 px, depth 2, 4 base filters, the sample's classes."""
    return Config(classes=list(CLASSES), image_size=SIZE, batch_size=8, epochs=1,
                  model=ModelConfig(depth=2, base_filters=4))


def _save_run(model, folder, config: Config | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_for_inference(model, folder / "model.keras")
    write_json_atomic(folder / "config.json", (config or tiny_config()).to_dict())
    return folder


def train_tiny_run(folder) -> Path:
    """A tiny U-Net fitted for two steps on blob scenes, saved as a run folder (its output is near random)."""
    import keras

    from keras_unet.imaging.preprocess import prepare
    from keras_unet.model.losses import BceDiceLoss
    from keras_unet.model.unet import build_unet

    config = tiny_config()
    rng = np.random.default_rng(0)
    scenes = [blob_scene(rng, SIZE, SIZE) for _ in range(16)]
    x = np.stack([prepare(image, config)[0] for image, _ in scenes])
    y = np.stack([masks for _, masks in scenes]).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_unet(len(CLASSES), depth=2, base_filters=4)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=BceDiceLoss(), run_eagerly=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # eager: two steps cost less than tracing
    return _save_run(model, folder)


def blob_model():
    """A hand-set Keras model that finds the blob scenes' classes by brightness: smooth, then one threshold each.

    It knows nothing of left and right, so its run switches test-time flipping off.
    """
    import keras
    from keras import layers

    from keras_unet.model.losses import BceDiceLoss

    inputs = keras.Input((None, None, 1), name="image")
    x = layers.AveragePooling2D(3, strides=1, padding="same", name="smooth")(inputs)
    logits = layers.Conv2D(len(CLASSES), 1, name="logits")(x)
    probs = layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    model = keras.Model(inputs, probs)
    steepness, cuts = 40.0, np.array([0.83, 0.5, 0.2])  # normalised levels: about 1.0, 0.63, 0.32, background 0
    model.get_layer("logits").set_weights([np.full((1, 1, 1, len(CLASSES)), steepness, np.float32),
                                           (-steepness * cuts).astype(np.float32)])
    model.compile(optimizer="adam", loss=BceDiceLoss())
    return model


def _cached(name, tmp_path_factory, make):
    if name not in _RUN:
        _RUN[name] = make(tmp_path_factory.mktemp(name))
    return _RUN[name]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Run folder of a tiny U-Net (trained two steps, once per test session)."""
    return _cached("tiny_run", tmp_path_factory, train_tiny_run)


@pytest.fixture(scope="session")
def blob_run(tmp_path_factory) -> Path:
    """Run folder of the hand-set blob model, whose masks follow the blob scenes closely."""
    return _cached("blob_run", tmp_path_factory, make_blob_run)


def make_blob_run(folder) -> Path:
    """Save the blob model as a run folder (TTA off in its settings)."""
    config = tiny_config()
    config.postprocess.tta = False
    return _save_run(blob_model(), folder, config)


def write_dicom(path, stored: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 16,
                transfer_syntax: str | None = None, pixel_data: bytes | None = None, **elements) -> Path:
    """Write a single-frame grayscale DICOM file (pydicom) of stored values; keyword elements are added as given.

    For example slope/intercept as RescaleSlope=2, RescaleIntercept=-1000; a window as WindowCenter, WindowWidth;
    spacing as PixelSpacing=[row, col]. transfer_syntax with pixel_data writes that (e.g. encapsulated) data as is.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    stored = np.asarray(stored)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    ds.PixelData = pixel_data if pixel_data is not None else stored.astype(stored.dtype.newbyteorder("<")).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self):
        return True


def identity_predictor():
    """A numpy-only Predictor (no TensorFlow): every class's probability is the pixel value / 255."""
    from keras_unet.infer.predictor import Predictor

    config = tiny_config()
    config.normalization.method = "none"
    return Predictor(lambda batch: np.repeat(batch, len(CLASSES), axis=-1), config, "identity")


_HOLD_LOCK = """
import sys, time
from keras_unet.io.files import hold_lock
with hold_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@contextlib.contextmanager
def lock_held_elsewhere(lock_path):
    """A child process holding io.files.hold_lock on lock_path while the block runs (yields its Popen)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
