"""keras_unet.infer.ranking and `predict.py --rank`: uncertainty scores, ranking order, ranking.csv, pre-annotations."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import CLASSES, SIZE, blob_run, blob_scene, tiny_config, tiny_run  # noqa: F401 (fixtures)
from keras_unet.cli import predict as predict_cli
from keras_unet.data.rasterize import rasterize
from keras_unet.errors import DataError
from keras_unet.imaging.metrics import soft_dice
from keras_unet.infer import ranking
from keras_unet.infer.load import load_predictor
from keras_unet.infer.predictor import Predictor
from keras_unet.io import images
from keras_unet.io.labelme import load_image, read_labelme
from labelme_factory import dice, document, write_image, write_json


def _identity_predictor(tta: bool = True) -> Predictor:
    """A Predictor whose every class's probability is the input pixel value (normalisation 'none': value / 255)."""
    config = tiny_config()
    config.normalization.method = "none"
    config.postprocess.tta = tta
    return Predictor(lambda batch: np.repeat(batch, len(CLASSES), axis=-1), config, "identity")


def _blob(shape=(40, 40), centre=(20, 20), radius=10, inside=0.999, outside=0.001) -> np.ndarray:
    y, x = np.mgrid[:shape[0], :shape[1]]
    disc = (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2
    return np.where(disc, inside, outside)


def _entropy(p: float) -> float:
    return float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))


def _numpy_score(maps, radius: int = 2) -> float:
    """The class score as the module docstring defines it, in plain numpy (no keras_unet, no OpenCV).

    R: pixels above 0.5 in any pass, dilated by the disk dy^2 + dx^2 <= radius^2; H: mean binary entropy (bits) of
    the passes' mean over R; D: 1 - 2 sum(p1 p2) / (sum(p1^2) + sum(p2^2)) over R (0 with one pass);
    score 1 - (1 - H)(1 - D), and 1 when R is empty."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    above = np.zeros(maps[0].shape, bool)
    for m in maps:
        above |= m > 0.5
    if not above.any():
        return 1.0
    h, w = above.shape
    region = np.zeros_like(above)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:  # region[y, x] |= above[y - dy, x - dx], inside the image
                region[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
                    above[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    inside = [m[region] for m in maps]
    mean = sum(inside) / len(inside)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = np.where((mean > 0) & (mean < 1), -(mean * np.log2(mean) + (1 - mean) * np.log2(1 - mean)), 0.0)
    entropy = bits.mean()
    if len(inside) == 1:
        return float(entropy)
    a, b = inside
    disagreement = 1 - 2 * (a * b).sum() / ((a * a).sum() + (b * b).sum())
    return float(1 - (1 - entropy) * (1 - disagreement))


def _run(*argv) -> int:
    return predict_cli.main([str(a) for a in argv])


# -- scores on hand-made probability maps --------------------------------------------------------------


def test_binary_entropy_in_bits():
    np.testing.assert_allclose(ranking.binary_entropy([0.0, 1.0, 0.5, 0.25, 0.9]),
                               [0.0, 0.0, 1.0, 0.811278, 0.468996], atol=1e-6)


def test_entropy_term_on_a_tiny_example_by_hand():
    # One row: only pixel 0 is above 0.5; dilated by 1 pixel the region is pixels 0 and 1.
    # H = (h(0.8) + h(0.25)) / 2 = (0.721928 + 0.811278) / 2 = 0.766603; one pass, so no disagreement term.
    row = np.array([[0.8, 0.25, 0.0, 0.0, 0.0]])
    assert ranking.class_score([row], radius=1) == pytest.approx(0.766603, abs=1e-6)
    assert ranking.class_score([row, row], radius=1) == pytest.approx(0.766603, abs=1e-6)  # passes agree: D = 0
    assert ranking.class_score([row], radius=0) == pytest.approx(0.721928, abs=1e-6)  # region: pixel 0 only
    # a pass at exactly 0.5 is not above the threshold: the region is pixel 0 alone, H = h(0.9) = 0.468996
    # (with 0.5 counted in: (0.468996 + 1) / 2 = 0.734498)
    assert ranking.class_score([np.array([[0.9, 0.5, 0.0]])], radius=0) == pytest.approx(0.468996, abs=1e-6)
    # the plain-numpy score the other tests compare with gives the same hand-computed numbers
    assert _numpy_score([row], radius=1) == pytest.approx(0.766603, abs=1e-6)
    assert _numpy_score([row, row], radius=1) == pytest.approx(0.766603, abs=1e-6)
    assert _numpy_score([row], radius=0) == pytest.approx(0.721928, abs=1e-6)


def test_soft_dice_by_hand():
    # 2 (0.8*0.6 + 0.2*0.4) / (0.8^2 + 0.2^2 + 0.6^2 + 0.4^2) = 1.12 / 1.2
    assert soft_dice([0.8, 0.2], [0.6, 0.4]) == pytest.approx(1.12 / 1.2)
    assert soft_dice([0.3, 0.7], [0.3, 0.7]) == pytest.approx(1.0)
    assert soft_dice([1.0, 0.0], [0.0, 1.0]) == 0.0
    assert soft_dice([0.0], [0.0]) == 1.0


def test_confident_map_scores_low_and_half_probabilities_score_high():
    confident = _blob()
    assert ranking.class_score([confident, confident]) < 0.02
    assert ranking.class_score([np.full((40, 40), 0.55)] * 2) == pytest.approx(_entropy(0.55), abs=1e-6)  # 0.993
    assert ranking.class_score([np.full((40, 40), 0.5)] * 2) == 1.0  # nothing strictly above 0.5: empty
    hazy = _blob(inside=0.6, outside=0.3)
    assert ranking.class_score([hazy, hazy]) > 0.9


def test_flip_disagreement_raises_the_score():
    plain = _blob(centre=(20, 16))
    agree = ranking.class_score([plain, plain])
    shifted = ranking.class_score([plain, _blob(centre=(20, 24))])
    apart = ranking.class_score([plain, _blob(centre=(20, 30), radius=6)])
    assert agree < 0.02 < 0.3 < shifted < apart <= 1.0
    # entropy and disagreement over the dilated region, combined as 1 - (1 - H)(1 - D), recomputed in plain numpy
    assert shifted == pytest.approx(_numpy_score([plain, _blob(centre=(20, 24))]), abs=1e-9)
    assert apart == pytest.approx(_numpy_score([plain, _blob(centre=(20, 30), radius=6)]), abs=1e-9)
    assert agree == pytest.approx(_numpy_score([plain, plain]), abs=1e-9)


def test_empty_prediction_scores_one_unless_the_class_is_optional():
    nothing = np.full((40, 40), 0.01)
    assert ranking.class_score([nothing, nothing]) == 1.0
    assert ranking.class_score([nothing], expected=False) == 0.0
    one_pass_sees_it = _blob()
    assert ranking.class_score([nothing, one_pass_sees_it]) < 1.0  # not empty, but the passes disagree


def test_class_scores_and_image_score():
    sure, empty = _blob(), np.zeros((40, 40))
    passes = [np.stack([sure, empty, sure], axis=-1)] * 2
    scores = ranking.class_scores(passes, CLASSES)
    sure_score = _numpy_score([sure, sure])  # an entropy term only: the two passes agree
    assert sure_score < 0.02
    assert scores == pytest.approx({"left_clavicle": sure_score, "right_clavicle": 1.0, "rib": sure_score}, abs=1e-9)
    assert list(scores) == CLASSES
    assert ranking.image_score(scores) == pytest.approx((2 * sure_score + 1.0) / 3, abs=1e-9)
    assert ranking.class_scores(passes, CLASSES, expected=["left_clavicle", "rib"])["right_clavicle"] == 0.0
    with pytest.raises(ValueError):
        ranking.class_scores(passes, CLASSES[:2])
    assert ranking.class_score([np.full((4, 4), np.nan)]) == 1.0


# -- the passes and scores of real images ------------------------------------------------------------


def test_passes_are_at_network_resolution_and_average_to_the_tta_probabilities():
    from test_predictor import StubNetwork  # asymmetric, so the mirrored pass differs from the plain one

    predictor = Predictor(StubNetwork(3), tiny_config())
    image = blob_scene(np.random.default_rng(2), 40, 70)[0]
    passes = predictor.predict_passes(image)
    assert len(passes) == 2 and passes[0].shape == (37, SIZE, 3)  # 40x70 letterboxed into 64: 37x64, no padding
    assert not np.allclose(passes[0], passes[1], atol=1e-3)
    mean = cv2.resize((passes[0] + passes[1]) / 2, (70, 40), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(mean, predictor.predict_probs(image, tta=True), atol=1e-5)
    assert len(predictor.predict_passes(image, tta=False)) == 1


def test_image_size_does_not_change_the_score(blob_run):  # noqa: F811
    predictor = load_predictor(blob_run)
    image = blob_scene(np.random.default_rng(5), 60, 100)[0]
    small = ranking.score_image(predictor, image)
    large = ranking.score_image(predictor, cv2.resize(image, (300, 180), interpolation=cv2.INTER_LINEAR))
    for name in CLASSES:
        assert small[name] == pytest.approx(large[name], abs=0.03)


def test_rank_images_orders_most_uncertain_first(tmp_path):
    predictor = _identity_predictor()
    levels = {"sure": 255, "fairly_sure": 230, "unsure": 140, "nothing": 0}  # p = level / 255
    paths = [write_image(tmp_path / f"{name}.png", np.full((30, 50), level, np.uint8))
             for name, level in levels.items()]
    ranked = ranking.rank_images(predictor, paths)
    assert [r.path.stem for r in ranked] == ["nothing", "unsure", "fairly_sure", "sure"]
    by_name = {r.path.stem: r for r in ranked}
    assert by_name["nothing"].score == 1.0 and by_name["sure"].score == 0.0
    assert by_name["unsure"].score == pytest.approx(_entropy(140 / 255), abs=1e-4)
    assert by_name["fairly_sure"].classes == pytest.approx({c: _entropy(230 / 255) for c in CLASSES}, abs=1e-4)


def test_rank_images_raises_on_a_bad_image_or_reports_it(tmp_path):
    predictor = _identity_predictor()
    good = write_image(tmp_path / "good.png", np.full((30, 50), 200, np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError):
        ranking.rank_images(predictor, [good, bad])
    errors = []
    ranked = ranking.rank_images(predictor, [good, bad], on_error=lambda path, exc: errors.append(path))
    assert [r.path for r in ranked] == [good] and errors == [bad]


# -- writing: ranking.csv and the pre-annotations ----------------------------------------------------


@pytest.fixture()
def scenes(tmp_path) -> Path:
    """Three blob scenes and a blank image (the blob model finds nothing in it), in tmp/in."""
    folder = tmp_path / "in"
    rng = np.random.default_rng(11)
    for i, (h, w) in enumerate([(70, 110), (96, 64), (80, 80)]):
        write_image(folder / f"scene_{i}.png", blob_scene(rng, h, w)[0])
    write_image(folder / "blank.png", np.full((60, 60), 20, np.uint8))
    return folder


def test_write_ranking_csv_and_pre_annotations(blob_run, scenes, tmp_path):  # noqa: F811
    predictor = load_predictor(blob_run)
    paths = sorted(scenes.glob("*.png"))
    ranked = ranking.rank_images(predictor, paths)
    assert ranked[0].path.name == "blank.png" and ranked[0].score == 1.0
    out = tmp_path / "out"
    written = ranking.write_ranking(ranked, out, predictor, top=2)
    with open(out / "ranking.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["rank", "image", "score", *CLASSES]
    assert [row[0] for row in rows[1:]] == ["1", "2", "3", "4"]
    assert [row[1] for row in rows[1:]] == [str(r.path) for r in ranked]
    for row, item in zip(rows[1:], ranked):
        assert float(row[2]) == pytest.approx(item.score, abs=1e-6)
        assert [float(v) for v in row[3:]] == pytest.approx([item.classes[c] for c in CLASSES], abs=1e-6)
    scores = [float(row[2]) for row in rows[1:]]
    assert scores == sorted(scores, reverse=True)
    assert written == [out / f"{r.path.stem}.json" for r in ranked[:2]]
    assert sorted(p.name for p in out.iterdir()) == sorted(["ranking.csv", *(p.name for p in written)])
    scene = ranked[1].path  # a blob scene: its pre-annotation has the model's polygons
    document_ = json.loads((out / f"{scene.stem}.json").read_text())
    assert document_["imagePath"] == f"../in/{scene.name}"
    annotation = read_labelme(out / f"{scene.stem}.json")
    assert annotation.image_path.resolve() == scene.resolve()
    traced, _ = rasterize(annotation, CLASSES)
    _, predicted = predictor.segment(load_image(annotation))
    assert {s.label for s in annotation.shapes} == set(CLASSES)
    for c in range(len(CLASSES)):
        assert dice(traced[..., c], predicted[..., c]) >= 0.98
    assert read_labelme(out / "blank.json").shapes == []


def test_write_ranking_refuses_colliding_stems_among_the_top(tmp_path):
    predictor = _identity_predictor()
    a = write_image(tmp_path / "a" / "x.png", np.full((20, 20), 140, np.uint8))
    b = write_image(tmp_path / "b" / "x.png", np.full((20, 20), 150, np.uint8))
    ranked = ranking.rank_images(predictor, [a, b])
    with pytest.raises(DataError, match="same stem"):
        ranking.write_ranking(ranked, tmp_path / "out", predictor, top=2)
    assert not (tmp_path / "out").exists()
    assert len(ranking.write_ranking(ranked, tmp_path / "out", predictor, top=1)) == 1


def test_rank_folder_skips_annotated_duplicate_and_bad_images(tmp_path, capsys):
    predictor = _identity_predictor()
    folder = tmp_path / "in"
    for name, level in [("a.png", 140), ("b.png", 230), ("c.png", 255), ("done.png", 128), ("a.jpg", 128)]:
        write_image(folder / name, np.full((30, 40), level, np.uint8))
    write_json(folder / "done.json", document([], "done.png", 30, 40))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    result = ranking.rank_folder(predictor, folder, out, top=2)
    assert [r.path.name for r in result["ranked"]] == ["a.jpg", "b.png", "c.png"]  # a.jpg sorts first of the stem a
    assert result["annotated"] == [str(folder / "done.png")]
    assert sorted(Path(p).name for p in result["failed"]) == ["a.png", "broken.png"]
    captured = capsys.readouterr()
    assert "3 image(s) ranked; 1 already annotated" in captured.out and "2 skipped as reported above" in captured.out
    assert sum(line.startswith("skipped:") for line in (captured.out + captured.err).splitlines()) == 2
    top_lines = [line for line in captured.out.splitlines() if line.startswith(("   1 ", "   2 "))]
    assert len(top_lines) == 2 and "a.jpg" in top_lines[0] and "b.png" in top_lines[1]
    assert sorted(p.name for p in out.iterdir() if p.name != ".progress.jsonl") == [
        "a.json", "b.json", "ranking.csv", "summary.csv"]


def test_rank_folder_with_everything_annotated_writes_an_empty_ranking(tmp_path, capsys):
    predictor = _identity_predictor()
    folder = tmp_path / "in"
    write_image(folder / "a.png", np.full((30, 40), 140, np.uint8))
    write_json(folder / "a.json", document([], "a.png", 30, 40))
    result = ranking.rank_folder(predictor, folder, tmp_path / "out")
    assert result["ranked"] == [] and result["written"] == []
    assert (tmp_path / "out" / "ranking.csv").read_text() == "rank,image,score," + ",".join(CLASSES) + "\n"
    assert "0 image(s) ranked; 1 already annotated" in capsys.readouterr().out


# -- predict.py --rank --------------------------------------------------------------------------------


def test_predict_rank_end_to_end(blob_run, scenes, tmp_path, capsys):  # noqa: F811
    write_json(scenes / "scene_2.json", document([], "scene_2.png", 80, 80))  # annotated already
    out = tmp_path / "out"
    assert _run("--model", blob_run, "--input", scenes, "--out", out, "--rank", "--top", "2") == 0
    captured = capsys.readouterr()
    assert "3 image(s) ranked; 1 already annotated" in captured.out
    with open(out / "ranking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(row["image"]).name for row in rows][0] == "blank.png"
    assert sorted(Path(row["image"]).name for row in rows) == ["blank.png", "scene_0.png", "scene_1.png"]
    assert float(rows[0]["score"]) == 1.0 and float(rows[-1]["score"]) < 0.5
    jsons = sorted(p.name for p in out.glob("*.json"))
    assert len(jsons) == 2 and "blank.json" in jsons and "scene_2.json" not in jsons
    assert not any(p.is_dir() for p in out.iterdir())  # no mask folders or overlays with --rank
    for name in jsons:
        annotation = read_labelme(out / name)
        assert annotation.image_path.resolve() == (scenes / name.replace(".json", ".png")).resolve()
    top = [line for line in captured.out.splitlines() if line.startswith(("   1 ", "   2 "))]
    assert len(top) == 2 and "blank.png" in top[0]


def test_predict_rank_keeps_the_output_folder_safe_and_checks_options(tiny_run, scenes, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    args = ["--model", tiny_run / "model.keras", "--input", scenes, "--out", out, "--rank"]
    assert _run(*args) == 0  # a trained U-Net, with test-time flipping: two passes
    with open(out / "ranking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(row["image"]).name for row in rows) == sorted(p.name for p in scenes.glob("*.png"))
    predictor = load_predictor(tiny_run / "model.keras")
    one_pass_differs = []
    for row in rows:  # each score is that of the plain and the mirrored pass of the run's model, in numpy
        passes = predictor.predict_passes(images.read_image(row["image"]), tta=True)
        assert len(passes) == 2
        by_class = {c: _numpy_score([p[..., k] for p in passes]) for k, c in enumerate(CLASSES)}
        assert [float(row[c]) for c in CLASSES] == pytest.approx(list(by_class.values()), abs=2e-6)
        assert float(row["score"]) == pytest.approx(np.mean(list(by_class.values())), abs=2e-6)
        plain = np.mean([_numpy_score([passes[0][..., k]]) for k in range(len(CLASSES))])
        one_pass_differs.append(abs(plain - float(row["score"])) > 1e-4)
    assert any(one_pass_differs)  # the mirrored pass went into the scores
    assert len(list(out.glob("*.json"))) == 4  # fewer images than the default top 10
    capsys.readouterr()
    assert _run(*args) == 0  # the same command again: every score kept from the first run
    assert f"image(s) ranked ({len(rows)} scored by an earlier run)" in capsys.readouterr().out
    assert _run(*args, "--overwrite", "--top", "0") == 0
    with pytest.raises(SystemExit):
        _run("--model", tiny_run, "--input", scenes, "--out", tmp_path / "o2", "--top", "3")
    assert "--top needs --rank" in capsys.readouterr().err
