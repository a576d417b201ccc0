"""A tiny trained run of two mirrored classes and its export to every format, made once per test session and shared
by the export and edge-runner tests."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_unet.config import Config, ModelConfig
from keras_unet.io.files import write_json_atomic
from keras_unet.model.saving import save_for_inference

CLASSES = ["left_bone", "right_bone"]
SIZE = 64
HEIGHT, WIDTH = 60, 84  # not square: the letterbox pads
_CACHE: dict = {}
BASIC_FORMATS = ("saved_model", "tflite", "tflite_fp16", "tflite_int8", "onnx")  # what the default suite exports


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image with a bright ellipse in each half and its (H, W, 2) 0/1 masks."""
    image = rng.normal(40, 8, (HEIGHT, WIDTH))
    masks = np.zeros((HEIGHT, WIDTH, 2), np.uint8)
    for c, (low, high) in enumerate(((0.15, 0.35), (0.65, 0.85))):
        centre = (int(rng.uniform(low, high) * WIDTH), int(rng.uniform(0.3, 0.7) * HEIGHT))
        axes = (int(rng.uniform(6, 12)), int(rng.uniform(8, 18)))
        plane = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.ellipse(plane, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        masks[..., c] = plane
        image[plane > 0] += 150
    return np.clip(image, 0, 255).astype(np.uint8), masks


def write_data(folder: Path, count: int = 16, seed: int = 0) -> Path:
    """An image + masks/<class>/ data folder of synthetic scenes."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    for c in CLASSES:
        (folder / "masks" / c).mkdir(parents=True)
    for i in range(count):
        image, masks = scene(rng)
        cv2.imwrite(str(folder / "images" / f"s{i:02d}.png"), image)
        for c, name in enumerate(CLASSES):
            cv2.imwrite(str(folder / "masks" / name / f"s{i:02d}.png"), masks[..., c] * 255)
    return folder


def training_arrays(data: Path, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Prepared images and letterboxed masks, as the numpy preprocessing makes them."""
    from keras_unet.imaging.preprocess import letterbox, prepare

    xs, ys = [], []
    for path in sorted((data / "images").glob("*.png")):
        xs.append(prepare(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), config)[0])
        masks = np.stack([cv2.imread(str(data / "masks" / c / path.name), 0) / 255.0 for c in CLASSES], -1)
        ys.append(letterbox(masks.astype(np.float32), config.image_size)[0])
    return np.stack(xs), np.stack(ys)


def make_run(folder: Path, precision: str = "float32", steps: int = 60, sharpen: float = 4.0) -> Path:
    """A run folder (model.keras, config.json, split.json) of a tiny U-Net trained briefly on synthetic scenes.

    A few dozen steps leave the probabilities soft; scaling the final logits by `sharpen` keeps the masks and
    makes them as confident as longer training would, so the parity gates measure conversion error only.
    """
    import keras

    from keras_unet.model.losses import BceDiceLoss
    from keras_unet.model.unet import model_from_config

    data = write_data(folder / "data")
    run = folder / "run"
    run.mkdir()
    config = Config(data=str(data), classes=list(CLASSES), image_size=SIZE, precision=precision,
                    cache_dir=str(folder / "cache"), model=ModelConfig(depth=2, base_filters=4))
    config.postprocess.tta = False
    x, y = training_arrays(data, config)
    repeats = (1 + steps * 8 // 12, 1, 1, 1)  # one epoch of `steps` batches of 8, all of one shape: traced once
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(precision)
    try:
        model = model_from_config(config)
        model.compile(keras.optimizers.Adam(1e-2), loss=BceDiceLoss(), jit_compile=False, run_eagerly=steps < 5)
        model.fit(np.tile(x[:12], repeats)[:steps * 8], np.tile(y[:12], repeats)[:steps * 8], batch_size=8,
                  epochs=1, verbose=0)
        logits = model.get_layer("logits")
        logits.set_weights([w * sharpen for w in logits.get_weights()])
        save_for_inference(model, run / "model.keras")  # as a run writes it: the network alone
    finally:
        keras.config.set_dtype_policy("float32")
    write_json_atomic(run / "config.json", config.to_dict())
    stems = [f"s{i:02d}" for i in range(16)]
    (run / "split.json").write_text(json.dumps({"train": stems[:12], "val": stems[12:]}))
    return run


REFINE_SIZE = 32


def crop_arrays(data: Path, config: Config, fine: Config) -> tuple[np.ndarray, np.ndarray]:
    """The refine stage's training pairs: each structure's crop (cut around its expert mask as the chain cuts it around
    the first model's) prepared at the refine size, and its letterboxed mask."""
    from keras_unet.imaging import crops
    from keras_unet.imaging.preprocess import letterbox, normalize, prepare

    xs, ys = [], []
    for path in sorted((data / "images").glob("*.png"))[:12]:
        gray = normalize(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), fine.normalization)
        for name in CLASSES:
            mask = (cv2.imread(str(data / "masks" / name / path.name), 0) > 0).astype(np.float32)
            box = crops.structure_box(mask, fine.crops.margin)
            xs.append(prepare(crops.crop(gray, box), fine, normalized=True)[0])
            ys.append(letterbox(crops.crop(mask, box)[..., None], fine.image_size)[0])
    return np.stack(xs), np.stack(ys)


def make_refine_run(folder: Path, steps: int = 60, sharpen: float = 4.0) -> Path:
    """make_run's run with a refine stage (refine/: a U-Net on 32 px crops around each bone, trained as briefly and
    sharpened the same way), blend 0.5 and flip TTA on, so that every step of the chain shows in its masks."""
    import keras

    from keras_unet.config import load_config
    from keras_unet.model.losses import BceDiceLoss
    from keras_unet.model.unet import model_from_config

    run = make_run(folder, steps=steps, sharpen=sharpen)
    config = load_config(run / "config.json")
    config.refine.enabled, config.refine.image_size, config.refine.blend = True, REFINE_SIZE, 0.5
    config.postprocess.tta = True
    config.out = str(run)
    write_json_atomic(run / "config.json", config.to_dict())
    fine = config.refine_stage()
    x, y = crop_arrays(Path(config.data), config, fine)
    keras.utils.set_random_seed(1)
    model = model_from_config(fine)
    model.compile(keras.optimizers.Adam(1e-2), loss=BceDiceLoss(), jit_compile=False)
    repeats = (1 + steps * 8 // len(x), 1, 1, 1)
    model.fit(np.tile(x, repeats)[:steps * 8], np.tile(y, repeats)[:steps * 8], batch_size=8, epochs=1, verbose=0)
    logits = model.get_layer("logits")
    logits.set_weights([w * sharpen for w in logits.get_weights()])
    (run / "refine").mkdir()
    save_for_inference(model, run / "refine" / "model.keras")
    write_json_atomic(run / "refine" / "config.json", fine.to_dict())
    return run


def cached_run(name: str, tmp_path_factory, refine: bool = False, **kwargs) -> Path:
    """make_run (or, with refine, make_refine_run) once per test session."""
    if name not in _CACHE:
        _CACHE[name] = (make_refine_run if refine else make_run)(tmp_path_factory.mktemp(name), **kwargs)
    return _CACHE[name]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return cached_run("export_run", tmp_path_factory)


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, dict]:
    """Every format of the tiny run, exported once."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export.exporter import export_run
    from keras_unet.export.options import ExportOptions

    if "exported" not in _CACHE:  # test_export.py and test_edge.py both use it: export once per session
        out = tmp_path_factory.mktemp("exports") / "all"
        options = ExportOptions(formats=BASIC_FORMATS, parity_images=4)  # onnx_int8: the slow chain tests
        _CACHE["exported"] = out, export_run(tiny_run / "model.keras", out, options, log=None)
    return _CACHE["exported"]


@pytest.fixture(scope="session")
def refine_run(tmp_path_factory) -> Path:
    return cached_run("refine_run", tmp_path_factory, refine=True)


@pytest.fixture(scope="session")
def chain_exported(refine_run, tmp_path_factory) -> tuple[Path, dict]:
    """The default formats of the two-stage run (both models in each), exported once."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export.exporter import export_run
    from keras_unet.export.options import ExportOptions

    if "chain_exported" not in _CACHE:
        out = tmp_path_factory.mktemp("exports") / "chain"
        _CACHE["chain_exported"] = out, export_run(refine_run / "model.keras", out, ExportOptions(parity_images=4),
                                                   log=None)
    return _CACHE["chain_exported"]
