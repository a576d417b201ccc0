"""keras_unet.train.selftrain: the teacher's masks for unlabelled images, as an image + masks/ folder training reads."""

import json
import shutil

import numpy as np

from conftest import SAMPLE_DIR
from helpers import tiny_config
from keras_unet.data.samples import prepare_samples
from keras_unet.infer.predictor import Predictor
from keras_unet.io import images
from keras_unet.train.selftrain import pseudo_label, pseudo_name


class SquareNetwork:
    """Every channel 0.9 on the input's top-left quarter, 0.05 elsewhere."""

    def __call__(self, batch):
        out = np.full((*batch.shape[:3], 3), 0.05, np.float32)
        half = batch.shape[1] // 2
        out[:, :half, :half] = 0.9
        return out


def test_pseudo_name_keeps_images_in_subfolders_apart(tmp_path):
    assert pseudo_name(tmp_path / "a" / "x.png", tmp_path) == "a__x.png"
    assert pseudo_name(tmp_path / "x.png", tmp_path) == "x.png"


def test_pseudo_labels_are_the_teachers_cleaned_masks_and_train_like_labels(tmp_path):
    root = tmp_path / "unlabelled"
    (root / "sub").mkdir(parents=True)
    sources = sorted(SAMPLE_DIR.glob("*.png"))[:2]
    shutil.copy(sources[0], root / "a.png")
    shutil.copy(sources[1], root / "sub" / "b.png")
    (root / "broken.png").write_bytes(b"not a png")
    shutil.copy(sources[1], root / "a.jpg.png")  # fine: its own stem
    (root / "sub" / "b.tif").write_bytes(b"II*\x00")  # same stem as sub/b.png once copied: left out
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    config = tiny_config()
    config.postprocess.tta = False
    predictor = Predictor(SquareNetwork(), config, "teacher")
    lines = []
    summary = pseudo_label(predictor, paths, root, tmp_path / "pseudo", log=lines.append)

    assert summary["images"] == 3 and summary["teacher"] == "teacher"
    assert sorted(summary["skipped"]) == sorted([str(root / "broken.png"), str(root / "sub" / "b.tif")])
    assert sum("(no pseudo-label)" in line for line in lines) == 2
    copied = tmp_path / "pseudo" / "images" / "sub__b.png"
    assert copied.read_bytes() == (root / "sub" / "b.png").read_bytes()
    image = images.read_image(root / "sub" / "b.png")
    _, expected = predictor.segment(image)
    for c, name in enumerate(config.classes):
        mask = images.read_image(tmp_path / "pseudo" / "masks" / name / "sub__b.png")
        np.testing.assert_array_equal(mask, expected[..., c] * 255)
    assert expected[0, 0, 0] == 1 and expected[-1, -1, 0] == 0  # the top-left quarter

    samples = prepare_samples(tmp_path / "pseudo", config.classes, cache_dir=tmp_path / "cache", log=None)
    assert sorted(s.stem for s in samples) == ["a", "a.jpg", "sub__b"]

    # a finished folder is reused as it is
    (root / "new.png").write_bytes((root / "a.png").read_bytes())
    again = pseudo_label(predictor, [*paths, root / "new.png"], root, tmp_path / "pseudo")
    assert again == json.loads((tmp_path / "pseudo" / "finished.txt").read_text()) and again["images"] == 3
