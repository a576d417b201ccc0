"""The default post-processing chosen per class from the training masks (postprocess.auto), on hand-made masks.

Two classes: `blob`, one solid disc per image, and `bars`, 5 separate vertical bars per image. The blob gets
keep_largest 1 and hole filling; the bars get neither, so a prediction whose bars are joined at the ends keeps
the gaps between them (the old default, hole filling in every class, closed them). Old config.json files (no
`auto`, fill_holes true) keep filling every class at inference."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_unet.config import Config, PostprocessConfig, config_from_dict, load_config
from keras_unet.data.cleanup import mask_structures, resolve_postprocess
from keras_unet.errors import ConfigError
from keras_unet.imaging.postprocess import auto_postprocess, choose_cleanup, clean_masks, mask_structure

LEGACY_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1" / "run" / "config.json"
CLASSES = ["blob", "bars"]
SIZE = 64


def blob(shift: int = 0) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[20 + shift:40 + shift, 8:28] = 1  # a 20 x 20 square
    return m


def bars(shift: int = 0) -> np.ndarray:
    """5 separate bars, 3 px wide, 3 px apart (columns 34..60), rows 10..50."""
    m = np.zeros((SIZE, SIZE), np.uint8)
    for k in range(5):
        m[10 + shift:50 + shift, 34 + 6 * k:37 + 6 * k] = 1
    return m


def structures(images: int = 4) -> dict:
    return {"blob": [mask_structure(blob(i)) for i in range(images)],
            "bars": [mask_structure(bars(i)) for i in range(images)]}


def test_hand_made_masks_are_what_the_tests_say():
    assert mask_structure(blob()) == (1, False, 400, 20 / 64)  # the largest part spans 20 of the image's 64 px
    assert mask_structure(bars()) == (5, False, 120, 40 / 64)  # 5 parts of 3 x 40 px, no holes: gaps open to the border
    assert mask_structure(np.zeros((4, 4))) == (0, False, 0, 0.0)


def test_single_blob_gets_keep_largest_and_fill_the_bars_neither():
    found = structures()
    assert choose_cleanup(found["blob"]) == {"parts": 1, "keep_largest": 1, "fill_holes": True, "min_area": None,
                                             "refine": "largest"}
    # the bars: 5 parts, neither; components under 5% of the smallest bar (120 px) dropped; not refined
    assert choose_cleanup(found["bars"]) == {"parts": 5, "keep_largest": None, "fill_holes": False, "min_area": 6,
                                             "refine": "skip"}
    chosen = auto_postprocess(PostprocessConfig(), found)
    assert chosen.keep_largest == {"blob": 1}
    assert chosen.fill_holes == ["blob"]
    assert chosen.min_areas == {"bars": 6}
    assert (chosen.threshold, chosen.min_area, chosen.tta, chosen.enabled) == (0.5, 0, True, True)  # the rest as given


def probabilities() -> np.ndarray:
    """A blob with a 4 x 4 hole and a stray speck; the 5 bars joined by a row at top and bottom (a ladder: the
    gaps between the bars become holes)."""
    b = blob()
    b[28:32, 16:20] = 0
    b[2:4, 2:4] = 1
    ladder = bars()
    ladder[10:12, 34:61] = 1
    ladder[48:50, 34:61] = 1
    return np.stack([b * 0.9, ladder * 0.9], axis=-1).astype(np.float32)


def test_bars_keep_their_gaps_with_the_chosen_settings():
    probs = probabilities()
    ladder = (probs[..., 1] > 0.5).astype(np.uint8)
    assert mask_structure(ladder)[:2] == (1, True)  # the gaps are holes: fill_holes would close them
    probs[30:32, 62:64, 1] = 0.9  # a 4 px speck beside the bars: under the bars' minimum area (6 px)
    masks = clean_masks(probs, CLASSES, auto_postprocess(PostprocessConfig(), structures()))
    np.testing.assert_array_equal(masks[..., 1], ladder)  # bars untouched: gaps kept, speck dropped
    probs[30:32, 62:64, 1] = 0
    np.testing.assert_array_equal(masks[..., 0], blob())  # blob: hole filled, speck dropped (keep largest 1)
    old = clean_masks(probs, CLASSES, PostprocessConfig(auto=False))  # the old default: fill every class
    assert old[..., 1].sum() == ladder.sum() + 4 * 3 * 36  # its 4 gaps of 3 x 36 px filled
    assert old[..., 1].sum() > masks[..., 1].sum()


def test_nearly_every_image_decides_the_count():
    split = blob()
    split[29:31, :] = 0  # the square in two pieces
    assert mask_structure(split) == (2, False, 180, 20 / 64)
    assert choose_cleanup([mask_structure(blob())] * 19 + [mask_structure(split)])["keep_largest"] == 1  # 1 in 20
    assert choose_cleanup([mask_structure(blob())] * 8 + [mask_structure(split)] * 2)["keep_largest"] == 2  # 2 in 10
    assert choose_cleanup([(1, False)] + [(0, False)] * 30)["keep_largest"] == 1  # images without it do not count
    three = [(3, False)] * 10
    assert choose_cleanup(three)["keep_largest"] == 3 and choose_cleanup([(4, False)] * 10)["keep_largest"] is None


def test_a_class_with_holes_gets_neither():
    ring = blob()
    ring[26:34, 14:22] = 0
    assert mask_structure(ring) == (1, True, 336, 20 / 64)
    # a lattice: 1% of its smallest component (336 px)
    assert choose_cleanup([mask_structure(ring)] * 4) == {"parts": 1, "keep_largest": None, "fill_holes": False,
                                                          "min_area": 3, "refine": "largest"}


def test_explicit_user_settings_win():
    found = structures()
    mine = auto_postprocess(PostprocessConfig(keep_largest={"bars": 2, "blob": 3}), found)
    assert mine.keep_largest == {"bars": 2, "blob": 3} and mine.fill_holes == ["blob"]
    assert auto_postprocess(PostprocessConfig(fill_holes=False), found).fill_holes is False
    assert auto_postprocess(PostprocessConfig(fill_holes=["bars"]), found).fill_holes == ["bars"]
    off = PostprocessConfig(auto=False)
    assert auto_postprocess(off, found) == off  # auto off: the settings exactly as given


def test_fill_holes_list_names_known_classes():
    with pytest.raises(ConfigError, match="fill_holes names class"):
        clean_masks(probabilities(), CLASSES, PostprocessConfig(fill_holes=["lung"]))
    with pytest.raises(ConfigError, match="fill_holes must be true, false or a list"):
        dataclasses.replace(Config(), postprocess=PostprocessConfig(fill_holes="yes")).validate()


def write_folder(root: Path, images: int = 5) -> Path:
    """An image + masks/<class>/ data folder of the hand-made masks."""
    for name in CLASSES:
        (root / "masks" / name).mkdir(parents=True)
    for i in range(images):
        cv2.imwrite(str(root / f"img{i}.png"), np.full((SIZE, SIZE), 100 + i, np.uint8))
        cv2.imwrite(str(root / "masks" / "blob" / f"img{i}.png"), blob(i) * 255)
        cv2.imwrite(str(root / "masks" / "bars" / f"img{i}.png"), bars(i) * 255)
    return root


def test_resolve_postprocess_reads_the_training_masks_and_round_trips(tmp_path):
    data = write_folder(tmp_path / "data")
    config = Config(data=str(data), classes=list(CLASSES), cache_dir=str(tmp_path / "cache"), val_fraction=0.4)
    lines = []
    resolved = resolve_postprocess(config, lines.append)
    assert resolved.postprocess.keep_largest == {"blob": 1}
    assert resolved.postprocess.fill_holes == ["blob"]
    assert config.postprocess == PostprocessConfig()  # the caller's config is left alone
    assert lines == ["post-processing from the training masks: blob: keep largest 1, fill holes; "
                     "bars: as predicted (up to 5 parts, 0 of 3 masks with holes), components under 6 px dropped"]
    saved = config_from_dict(resolved.to_dict()).validate()  # what config.json holds, read back
    assert saved.postprocess == resolved.postprocess
    assert resolve_postprocess(saved, lines.append).postprocess == saved.postprocess  # resolving again: the same
    off = dataclasses.replace(config, postprocess=PostprocessConfig(auto=False))
    assert resolve_postprocess(off).postprocess == PostprocessConfig(auto=False)


def test_mask_structures_reads_only_the_given_samples(tmp_path):
    from keras_unet.data.samples import load_samples

    data = write_folder(tmp_path / "data")
    config = Config(data=str(data), classes=list(CLASSES), cache_dir=str(tmp_path / "cache"), val_fraction=0.4)
    train, val = load_samples(config, log=lambda *a: None)
    found = mask_structures(train, CLASSES)
    assert len(found["blob"]) == len(train) == 3 and len(val) == 2
    assert set(found["bars"]) == {(5, False, 120, 40 / 64)}


def test_an_old_config_json_loads_and_fills_every_class_as_before():
    old = load_config(LEGACY_CONFIG).validate()
    post = old.postprocess
    assert "auto" not in json.loads(LEGACY_CONFIG.read_text())["postprocess"]
    assert post.fill_holes is True and post.keep_largest == {}
    probs = np.concatenate([probabilities(), probabilities()[..., 1:]], axis=-1)
    masks = clean_masks(probs, old.classes, post)
    for c in range(3):  # by hand: threshold 0.5, then every hole filled
        m = (probs[..., c] > 0.5).astype(np.uint8)
        outside = (1 - np.pad(m, 1)).astype(np.uint8)
        cv2.floodFill(outside, None, (0, 0), 2)  # 4-connected background reached from the border
        filled = m.copy()
        filled[outside[1:-1, 1:-1] == 1] = 1
        np.testing.assert_array_equal(masks[..., c], filled)
    assert masks[..., 2].sum() > (probs[..., 2] > 0.5).sum()  # the ladder's gaps filled, as before


def test_the_refine_stage_per_class_from_the_part_counts():
    from keras_unet.config import RefineConfig
    from keras_unet.imaging.postprocess import auto_refine

    pair = [(2, False, 50, 0.3)] * 4  # both lungs in one channel
    found = {**structures(), "pair": pair}
    assert [choose_cleanup(found[n])["refine"] for n in ("blob", "pair", "bars")] == ["largest", "components", "skip"]
    # parts spanning half the image or more in the median mask (the sample's rib lattices): a crop is no finer
    assert choose_cleanup([(2, True, 9000, 0.8)] * 3 + [(2, True, 9000, 0.3)] * 2)["refine"] == "skip"
    assert choose_cleanup([(1, False, 400, 0.49)] * 3)["refine"] == "largest"
    chosen = auto_refine(RefineConfig(enabled=True), found)
    assert (chosen.classes, chosen.components, chosen.enabled) == (["blob", "pair"], ["pair"], True)
    mine = auto_refine(RefineConfig(enabled=True, classes=["bars"]), found)  # the user's list: bars per component
    assert (mine.classes, mine.components) == (["bars"], ["bars"])
    assert auto_refine(RefineConfig(enabled=True), {"bars": found["bars"]}).enabled is False  # nothing to refine
    given = RefineConfig(enabled=True, components=[])
    assert auto_refine(given, found) == given


def test_resolve_postprocess_records_the_refine_choice(tmp_path):
    data = write_folder(tmp_path / "data")
    config = Config(data=str(data), classes=list(CLASSES), cache_dir=str(tmp_path / "cache"), val_fraction=0.4)
    config.refine.enabled, config.postprocess.auto = True, False
    lines = []
    resolved = resolve_postprocess(config, lines.append)
    assert resolved.postprocess == config.postprocess  # auto off: the post-processing as given
    assert (resolved.refine.classes, resolved.refine.components) == (["blob"], [])
    assert lines == ["refine stage from the training masks: blob: a crop around the largest part; bars: not refined"]
    stage = config_from_dict(resolved.to_dict()).validate().refine_stage()
    assert (stage.crops.classes, stage.crops.components, stage.crops.overlap) == (["blob"], [], "mean")
