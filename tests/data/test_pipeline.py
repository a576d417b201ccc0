"""The tf.data pipeline: shapes, split, augmentation that moves image and masks together, flip with class swap."""

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_unet.config import AugmentConfig, Config, NormalizationConfig
from keras_unet.data.pipeline import make_dataset
from keras_unet.data.samples import split_samples

CLASSES = ["left_clavicle", "right_clavicle", "rib"]


@dataclass
class FakeSample:
    stem: str
    image_path: Path
    mask_paths: list = field(default_factory=list)


def write_sample(folder: Path, stem: str, size=64):
    """Image bright exactly where a mask is set; left_clavicle on the image's right, right_clavicle on its left."""
    masks = np.zeros((3, size, size), np.uint8)
    masks[0, 10:20, 36:60] = 1  # left_clavicle (240 px): patient's left = image right
    masks[1, 10:20, 4:24] = 1  # right_clavicle (200 px): image left
    masks[2, 30:40, 8:56] = 1  # rib
    image = (40 + 200 * masks.max(axis=0)).astype(np.uint8)
    (folder / "images").mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "images" / f"{stem}.png"), image)
    paths = []
    for name, m in zip(CLASSES, masks):
        (folder / name).mkdir(exist_ok=True)
        paths.append(folder / name / f"{stem}.png")
        cv2.imwrite(str(paths[-1]), m * 255)
    return FakeSample(stem, folder / "images" / f"{stem}.png", paths)


def config_for(**augment):
    return Config(classes=CLASSES, image_size=64, batch_size=4,
                  normalization=NormalizationConfig(method="minmax"), augment=AugmentConfig(**augment))


def test_batches_have_network_shape_and_range(tmp_path):
    samples = [write_sample(tmp_path, f"s{i}") for i in range(5)]
    images, masks = next(iter(make_dataset(samples, config_for(), training=True)))
    assert images.shape == (4, 64, 64, 1) and masks.shape == (4, 64, 64, 3)
    assert float(images.numpy().min()) >= 0.0 and float(images.numpy().max()) <= 1.0
    m = masks.numpy()
    assert m.min() >= 0.0 and m.max() <= 1.0  # soft (bilinear) masks stay in [0, 1]
    assert m.max() > 0.99  # on the 0..1 scale, not 0..1/257 or 0..1/255 of it
    assert (m.sum(axis=(1, 2)) > 50).all()  # every class of every image keeps its structure through augmentation


def test_validation_pipeline_is_exact(tmp_path):
    sample = write_sample(tmp_path, "s0")
    images, masks = next(iter(make_dataset([sample], config_for(), training=False)))
    m = masks.numpy()[0]
    assert m[15, 50, 0] == 1.0 and m[15, 10, 1] == 1.0 and m[35, 30, 2] == 1.0
    assert m[:, :, 0].sum() == 240 and images.numpy()[0, 15, 50, 0] == 1.0


def test_geometry_moves_image_and_masks_together(tmp_path):
    samples = [write_sample(tmp_path, f"s{i}") for i in range(4)]
    config = config_for(rotation=20, scale=0.2, shift=0.1, brightness=0, contrast=0, gamma=0, noise=0, flip=False)
    images, masks = next(iter(make_dataset(samples, config, training=True)))
    bright = images.numpy()[..., 0] > 0.5
    labelled = masks.numpy().max(axis=-1) > 0.5
    assert not np.array_equal(labelled[0], labelled[1]) or not np.array_equal(labelled[1], labelled[2])
    assert np.mean(bright == labelled) > 0.97


def test_flip_swaps_left_and_right_classes(tmp_path):
    samples = [write_sample(tmp_path, f"s{i}") for i in range(8)]
    config = config_for(rotation=0, scale=0, shift=0, brightness=0, contrast=0, gamma=0, noise=0, flip=True)
    config.batch_size = 8
    images, masks = next(iter(make_dataset(samples, config, training=True)))
    m, x = masks.numpy(), images.numpy()[..., 0]
    original = write_sample(tmp_path, "reference")
    ref = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) / 255.0 for p in original.mask_paths], axis=-1)
    flipped = [i for i in range(8) if m[i, :, :, 1].sum() == 240]  # the 240-px left clavicle, now "right"
    kept = [i for i in range(8) if m[i, :, :, 0].sum() == 240]
    assert flipped and kept and len(flipped) + len(kept) == 8
    for i in flipped:
        np.testing.assert_array_equal(m[i, :, :, 1], ref[:, ::-1, 0])  # mirrored left clavicle -> right channel
        np.testing.assert_array_equal(m[i, :, :, 0], ref[:, ::-1, 1])
        np.testing.assert_array_equal(m[i, :, :, 2], ref[:, ::-1, 2])
        assert x[i, 15, 26] == 1.0 and x[i, 15, 37] == 0.0  # the image flipped with the masks
    for i in kept:
        np.testing.assert_array_equal(m[i], ref)
        assert x[i, 15, 26] == 0.0 and x[i, 15, 37] == 1.0


def test_augmentation_differs_between_epochs(tmp_path):
    samples = [write_sample(tmp_path, "s0")]
    ds = make_dataset(samples, config_for(), training=True)
    first = next(iter(ds))[0].numpy()
    second = next(iter(ds))[0].numpy()
    assert not np.array_equal(first, second)


def test_split_is_deterministic_and_disjoint():
    samples = [FakeSample(f"s{i:02d}", Path(f"s{i}")) for i in range(20)]
    train1, val1 = split_samples(samples, 0.2, seed=3)
    train2, val2 = split_samples(list(reversed(samples)), 0.2, seed=3)
    assert [s.stem for s in val1] == [s.stem for s in val2] and len(val1) == 4
    assert not {s.stem for s in train1} & {s.stem for s in val1}
    assert len(train1) + len(val1) == 20
    assert [s.stem for s in split_samples(samples, 0.2, seed=4)[1]] != [s.stem for s in val1]


def test_empty_sample_list_is_refused():
    with pytest.raises(ValueError):
        make_dataset([], config_for(), training=True)


def crop_config(**augment):
    config = config_for(**augment)
    config.image_size = 32
    config.normalization = NormalizationConfig(method="percentile")
    config.crops.classes = ["left_clavicle", "right_clavicle"]
    return config


def textured_sample(folder: Path, stem: str, size=64):
    """write_sample with a smooth gradient and noise, so normalisation and resizing have something to do."""
    sample = write_sample(folder, stem, size)
    image = cv2.imread(str(sample.image_path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    rng = np.random.default_rng(len(stem))
    image = image * 0.7 + np.linspace(0, 50, size)[None, :] + rng.normal(0, 5, image.shape)
    cv2.imwrite(str(sample.image_path), np.clip(image, 0, 255).astype(np.uint8))
    return sample


def test_validation_crops_match_the_numpy_crops_of_inference(tmp_path):
    from keras_unet.imaging import crops
    from keras_unet.imaging.preprocess import normalize, prepare

    config = crop_config()
    sample = textured_sample(tmp_path, "s0")
    images, masks = next(iter(make_dataset([sample], config, training=False)))
    assert images.shape == (2, 32, 32, 1) and masks.shape == (2, 32, 32, 1)  # one crop per clavicle, its own mask
    raw = cv2.imread(str(sample.image_path), cv2.IMREAD_UNCHANGED)
    full = normalize(raw, config.normalization)
    for k, name in enumerate(config.crops.classes):
        plane = cv2.imread(str(sample.mask_paths[CLASSES.index(name)]), cv2.IMREAD_GRAYSCALE)
        box = crops.structure_box(plane, config.crops.margin)
        expected, _ = prepare(crops.crop(full, box), config, normalized=True)
        np.testing.assert_allclose(images.numpy()[k], expected, atol=1e-5)
        expected_mask, _ = prepare(crops.crop(plane / np.float32(255), box), config, normalized=True)
        np.testing.assert_allclose(masks.numpy()[k], expected_mask, atol=1e-5)
        # the structure sits in the middle of its crop: margin 0.25 leaves a sixth of the side free on each side
        centre = masks.numpy()[k, 5:27, 5:27, 0]
        assert centre.sum() / masks.numpy()[k].sum() > 0.95
    # the right clavicle's box (rows 10-19, columns 4-23: side 30) reaches past the left border: zero padding
    assert box == (0, -1, 30) and images.numpy()[1, :, 0].max() == 0.0


def test_training_crops_are_jittered_and_stay_on_the_image(tmp_path):
    from keras_unet.data.pipeline import jittered_box
    import tensorflow as tf

    config = crop_config(enabled=False)
    config.crops.jitter = 0.3
    boxes = {tuple(int(v) for v in jittered_box(tf.constant([10, 36, 36]), tf.constant(s, tf.int64), 0.3, 64, 64))
             for s in range(40)}
    assert len(boxes) > 30
    for top, left, side in boxes:
        assert 36 / 1.3 - 1 <= side <= 36 * 1.3 + 1
        assert top + side >= 1 and top <= 63 and left + side >= 1 and left <= 63  # touches the image
    assert {tuple(int(v) for v in jittered_box(tf.constant([10, 36, 36]), tf.constant(5, tf.int64), 0.0, 64, 64))} \
        == {(10, 36, 36)}
    samples = [textured_sample(tmp_path, f"s{i}") for i in range(2)]
    first = [b.numpy() for b, _ in make_dataset(samples, config, training=True, batch_size=4)]
    second = [b.numpy() for b, _ in make_dataset(samples, config, training=True, batch_size=4)]
    assert first[0].shape == (4, 32, 32, 1)
    np.testing.assert_array_equal(first[0], second[0])  # seeded: the same run gives the same crops
