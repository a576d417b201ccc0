"""Small-data starts: the inpainting blanking, the layer transfer, a pretraining run, the CLI, the errors."""

import json
import shutil
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, SAMPLE_DIR
from keras_unet.config import Config, ModelConfig, PretrainConfig, load_config
from keras_unet.data.phantom import make_phantom
from keras_unet.errors import ConfigError, DataError
from keras_unet.io.files import write_json_atomic
from keras_unet.model import saving
from keras_unet.model.unet import model_from_config
from keras_unet.train import pretrain
from keras_unet.train.history import read_history


def tiny(classes=("a", "b", "c"), base_filters=4, **overrides) -> Config:
    """32 px, depth 2, 4 base filters: seconds per pretraining epoch."""
    return Config(classes=list(classes), image_size=32, model=ModelConfig(depth=2, base_filters=base_filters),
                  **overrides)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """Twelve phantom radiographs (8-bit PNG, one as RGB JPEG), a masks/ folder and a text file to be passed over."""
    folder = tmp_path_factory.mktemp("unlabelled")
    (folder / "sub").mkdir()
    for i in range(12):
        image, _ = make_phantom(np.random.default_rng([7, i]), 64)
        if i == 11:
            cv2.imwrite(str(folder / "sub" / f"x{i:02d}.jpg"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
        else:
            cv2.imwrite(str(folder / f"x{i:02d}.png"), image)
    (folder / "masks" / "rib").mkdir(parents=True)
    cv2.imwrite(str(folder / "masks" / "rib" / "x00.png"), np.zeros((64, 64), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


# -- the blanking ---------------------------------------------------------------------------------------


def test_blank_sets_exactly_the_first_count_boxes_to_zero():
    image = tf.reshape(tf.range(256, dtype=tf.float32) / 256.0 + 0.001, (16, 16, 1))  # no pixel is 0
    boxes = tf.constant([[2, 3, 4, 5], [10, 10, 3, 3], [0, 0, 16, 16]], tf.int32)  # [top, left, height, width]
    blanked, mask = pretrain.blank(image, boxes, 2)  # the third box (the whole image) is not among the first 2
    expected = np.zeros((16, 16), bool)
    expected[2:6, 3:8] = True
    expected[10:13, 10:13] = True
    assert np.array_equal(mask.numpy()[..., 0], expected.astype(np.float32))
    blanked, image = blanked.numpy()[..., 0], image.numpy()[..., 0]
    assert np.all(blanked[expected] == 0.0)
    assert np.array_equal(blanked[~expected], image[~expected])
    assert int(expected.sum()) == 4 * 5 + 3 * 3


@pytest.mark.parametrize("size, sides", [(256, (16, 48)), (32, (2, 6)), (512, (32, 96))])
def test_sampled_patches_have_the_configured_count_and_sizes(size, sides):
    settings = PretrainConfig()  # 10-20 rectangles of 16-48 px at 256 px
    assert pretrain.patch_sides(size, settings) == sides
    low, high = sides
    counts, widths = set(), set()
    for seed in range(40):
        boxes, count = pretrain.sample_patches(tf.constant(seed, tf.int64), size, settings)
        boxes, count = boxes.numpy(), int(count)
        assert boxes.shape == (20, 4) and 10 <= count <= 20
        top, left, height, width = boxes.T
        assert ((low <= height) & (height <= high) & (low <= width) & (width <= high)).all()
        assert ((top >= 0) & (left >= 0) & (top + height <= size) & (left + width <= size)).all()
        counts.add(count)
        widths.update(width.tolist())
    assert len(counts) > 4 and min(widths) <= low + 1 and max(widths) >= high - 1


def test_training_pair_keeps_pixels_outside_the_patches():
    config = tiny()
    config.augment.enabled = False
    config.pretrain.noise = 0.0
    image = tf.constant(np.random.default_rng(0).uniform(0.1, 1.0, (32, 32, 1)).astype(np.float32))
    x, y = pretrain.make_pair(image, tf.constant(3, tf.int64), config, config, None)
    x, target, mask = x.numpy()[..., 0], y.numpy()[..., 0], y.numpy()[..., 1] > 0
    assert np.array_equal(target, image.numpy()[..., 0])
    assert mask.any() and not mask.all()
    assert np.array_equal(x[~mask], target[~mask]) and np.all(x[mask] == 0.0)


# -- weight transfer ------------------------------------------------------------------------------------


def _run_folder(folder, config, seed):
    keras.utils.set_random_seed(seed)
    model = model_from_config(config)
    folder.mkdir()
    model.save(folder / "model.keras")
    write_json_atomic(folder / "config.json", config.to_dict())
    return model


def test_transfer_copies_matching_layers_and_leaves_the_head_when_classes_differ(tmp_path):
    source_model = _run_folder(tmp_path / "run", tiny(classes=("a", "b", "c")), seed=1)
    config = tiny(classes=("a", "b"))
    keras.utils.set_random_seed(2)
    model = model_from_config(config)
    head_before = [w.copy() for w in model.get_layer("logits").get_weights()]
    lines = []
    copied = saving.transfer(model, saving.read_source(tmp_path / "run"), saving.model_settings(config),
                               lines.append)
    with_weights = [layer.name for layer in model.layers if layer.weights]
    assert sorted(copied) == sorted(n for n in with_weights if n != "logits")
    for name in ("enc0_conv1", "enc1_conv2", "bottleneck_conv1", "dec1_up", "dec0_conv2", "enc0_bn1"):
        for got, want in zip(model.get_layer(name).get_weights(), source_model.get_layer(name).get_weights()):
            assert np.array_equal(got, want), name
    kernel = model.get_layer("enc0_conv1").get_weights()[0]
    assert not np.array_equal(kernel, model_from_config(config).get_layer("enc0_conv1").get_weights()[0])
    head = model.get_layer("logits").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(head, head_before))  # left at its initialisation
    assert head[0].shape == (1, 1, 4, 2) and source_model.get_layer("logits").get_weights()[0].shape == (1, 1, 4, 3)
    assert len(lines) == 1
    assert f"copied {len(with_weights) - 1} of {len(with_weights)} layers" in lines[0]
    assert "logits (weight shapes differ)" in lines[0] and "classes 2 here, 3 in the file" in lines[0]


def test_incompatible_init_weights_name_the_file_and_the_differing_setting(tmp_path):
    _run_folder(tmp_path / "wide", tiny(base_filters=8), seed=0)
    config = tiny(init_weights=str(tmp_path / "wide"))
    with pytest.raises(ConfigError, match=r"wide/model.keras: shares no layer .* settings differ: "
                                          r"model.base_filters 4 here, 8 in the file"):
        pretrain.check_start(config)


def test_missing_and_unreadable_init_weights_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.keras: init weights not found"):
        saving.read_source(tmp_path / "nope.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"broken.keras: cannot load the Keras model \("):
        saving.read_source(tmp_path / "broken.keras")
    (tmp_path / "broken.weights.npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DataError, match=r"broken.weights.npz: cannot read the weights file"):
        saving.read_source(tmp_path / "broken.weights.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DataError, match=r"other.npz: not a keras_unet weights file"):
        saving.read_source(tmp_path / "other.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty: folder holds no model.keras"):
        saving.read_source(tmp_path / "empty")
    (tmp_path / "weights.txt").write_text("1 2 3")
    with pytest.raises(ConfigError, match=r"weights.txt: cannot start from this kind of file"):
        saving.read_source(tmp_path / "weights.txt")
    with pytest.raises(ConfigError, match=r"gone: --pretrain folder not found"):
        pretrain.check_start(tiny(pretrain_data=str(tmp_path / "gone")))
    with pytest.raises(DataError, match=r"empty: no image files .* for --pretrain"):
        pretrain.check_start(tiny(pretrain_data=str(tmp_path / "empty")))


# -- pretraining ----------------------------------------------------------------------------------------


def test_unlabelled_images_are_found_in_subfolders_but_not_in_masks(unlabelled):
    names = [p.name for p in pretrain.list_unlabelled(unlabelled)]
    assert len(names) == 12 and "x11.jpg" in names and "notes.txt" not in names


def test_pretraining_lowers_the_reconstruction_loss_and_feeds_a_segmentation_unet(unlabelled, tmp_path):
    config = tiny(pretrain_data=str(unlabelled))
    config.pretrain.epochs, config.pretrain.batch_size, config.pretrain.learning_rate = 8, 4, 5e-3
    keras.utils.set_random_seed(0)
    lines = []
    path = pretrain.run_pretraining(config, tmp_path, log=lines.append)
    assert path == tmp_path / "pretrain" / "body.weights.npz" and not (tmp_path / "pretrain" / "backup").exists()
    rows = read_history(tmp_path / "pretrain" / "pretrain_history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(8))
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"] and rows[-1]["blanked_mae"] < 0.8 * rows[0]["blanked_mae"]
    source = saving.read_source(tmp_path / "pretrain")
    assert "reconstruction" not in source.layers and "logits" not in source.layers
    model = model_from_config(config)
    copied = saving.transfer(model, source, saving.model_settings(config), lines.append)
    assert len(copied) == len([layer for layer in model.layers if layer.weights]) - 1
    assert "not copied (left at their initialisation): logits (not in the file)" in lines[-1]
    again = pretrain.run_pretraining(config, tmp_path, log=lines.append)  # a resumed run reuses it
    assert again == path and "reusing" in lines[-1]


def test_pretrain_settings_come_from_a_yaml_config(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("pretrain_data: unlabelled/\ninit_weights: runs/old\npretrain:\n  epochs: 3\n  loss: mse\n"
                    "  patches: [4, 8]\n")
    config = load_config(path).validate()
    assert config.pretrain_data == "unlabelled/" and config.init_weights == "runs/old"
    assert config.pretrain.epochs == 3 and config.pretrain.loss == "mse" and config.pretrain.patches == [4, 8]
    config.pretrain.patches = [8, 4]
    with pytest.raises(ConfigError, match="pretrain.patches"):
        config.validate()


# -- the command line -----------------------------------------------------------------------------------


def test_train_py_pretrains_then_trains_from_the_pretrained_body(unlabelled, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for json_path in sorted(SAMPLE_DIR.glob("*.json"))[:4]:
        shutil.copy(json_path, data)
        shutil.copy(json_path.with_suffix(".png"), data)
    shutil.copy(SAMPLE_DIR / "labels.txt", data)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "--data", str(data), "--pretrain", str(unlabelled), "--pretrain-epochs", "1",
         "--image-size", "32", "--depth", "2", "--base-filters", "4", "--epochs", "1", "--batch-size", "2",
         "--val-fraction", "0.25", "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("pretrain/body.weights.npz", "pretrain/pretrain_history.csv", "pretrain/config.json",
                 "model.keras", "metrics.json", "history.csv"):
        assert (out / name).is_file(), name
    assert "pretraining: 12 unlabelled images" in proc.stdout
    assert "init weights: copied" in proc.stdout and "logits (not in the file)" in proc.stdout
    assert json.loads((out / "config.json").read_text())["pretrain_data"] == str(unlabelled)


def test_train_py_reports_a_missing_init_file_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "--init-weights", str(tmp_path / "old" / "model.keras"),
                           "--out", str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.endswith("model.keras: init weights not found (give a model.keras, "
                                                         "a run folder or a pretraining body.weights.npz)")
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()
