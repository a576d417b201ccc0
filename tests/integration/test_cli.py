"""Command-line behaviour a user meets first: the keras-unet dispatcher, and wrong class names refused before any
training starts."""

from __future__ import annotations

import pytest

from conftest import SAMPLE_DIR
from keras_unet import __version__
from keras_unet.cli.main import COMMANDS, main
from keras_unet.cli.train import main as train_main
from keras_unet.data.samples import prepare_samples
from keras_unet.errors import DataError


def test_version_and_usage(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"keras-unet {__version__}"
    assert main([]) == 0
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in COMMANDS)


def test_unknown_command_is_one_line(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown command 'trian'") and "\n" not in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_a_class_without_pixels_stops_training_before_it_starts(tmp_path, capsys):
    out = tmp_path / "run"
    code = train_main(["--classes", "nosuch", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                       "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0] == (f"error: {SAMPLE_DIR}: class(es) nosuch have no pixels in any of the 40 images, so nothing can "
                      "be learnt for them; check --classes. Labels found: left_clavicle x40 shapes, rib x1780 shapes, "
                      "right_clavicle x40 shapes")
    assert not out.exists()  # nothing written: the next run with the right classes starts clean


def test_require_pixels_names_the_classes_that_have_pixels(tmp_path):
    with pytest.raises(DataError) as caught:
        prepare_samples(SAMPLE_DIR, ["rib", "nosuch"], cache_dir=tmp_path, log=None, require_pixels=True)
    problem = caught.value.problem
    assert problem.startswith("class(es) nosuch have no pixels in any of the 40 images")
    assert "rib (" in problem and " px)" in problem and "left_clavicle x40 shapes" in problem
    # without the requirement (evaluation, say), a class absent from a folder is a warning only
    assert len(prepare_samples(SAMPLE_DIR, ["rib", "nosuch"], cache_dir=tmp_path, log=None)) == 40


FIXTURES = SAMPLE_DIR.parents[1] / "tests" / "fixtures" / "v0_1"


def test_edge_takes_a_folder_and_the_flags_of_the_other_commands(tmp_path):
    from keras_unet.cli.edge import main as edge_main

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"phantom_00{i}.png").write_bytes((SAMPLE_DIR / f"phantom_00{i}.png").read_bytes())
    model = FIXTURES / "export" / "model.tflite"
    assert edge_main(["--model", str(model), "--input", str(folder), "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a" / "rib").iterdir()) == [f"phantom_00{i}.png" for i in range(3)]
    # the older positional form gives the same masks
    assert edge_main([str(model), str(folder / "phantom_001.png"), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "rib" / "phantom_001.png").read_bytes() == \
        (tmp_path / "a" / "rib" / "phantom_001.png").read_bytes()


def test_masks_takes_input_and_its_older_positional_form(tmp_path):
    from keras_unet.cli.masks import main as masks_main

    assert masks_main(["--input", str(SAMPLE_DIR), "--classes", "rib", "--out", str(tmp_path / "a")]) == 0
    assert masks_main([str(SAMPLE_DIR), "--classes", "rib", "--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a" / "rib").iterdir())
    assert len(names) == 40 and names == sorted(p.name for p in (tmp_path / "b" / "rib").iterdir())


def test_predict_writes_only_the_classes_asked_for(tmp_path, capsys):
    from keras_unet.cli.predict import main as predict_main

    image = SAMPLE_DIR / "phantom_000.png"
    out = tmp_path / "out"
    assert predict_main(["--model", str(FIXTURES / "run"), "--input", str(image), "--out", str(out),
                         "--classes", "rib"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".progress.jsonl", "flags.csv", "overlays", "rib", "summary.csv"]
    assert predict_main(["--model", str(FIXTURES / "run"), "--input", str(image), "--out", str(tmp_path / "x"),
                         "--classes", "femur"]) == 2
    assert "class(es) femur not predicted by the model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_train_takes_input_and_data_as_the_same_flag():
    from keras_unet.cli.train import config_from_args, parse_args

    assert config_from_args(parse_args(["--input", "somewhere"])).data == "somewhere"
    assert config_from_args(parse_args(["--data", "somewhere"])).data == "somewhere"


def test_train_accepts_line_width_as_documented():
    from keras_unet.cli.train import config_from_args, parse_args

    assert config_from_args(parse_args(["--line-width", "5"])).line_width == 5


def test_the_readme_documents_every_loss_and_every_extra():
    import tomllib

    from keras_unet.config import LOSSES

    readme = (SAMPLE_DIR.parents[1] / "README.md").read_text()
    for name in LOSSES:
        assert f"`{name}`" in readme, f"the loss {name} is accepted but not documented"
    extras = tomllib.loads((SAMPLE_DIR.parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in extras:
        assert f'".[{extra}]"' in readme, f"the [{extra}] extra is not in the README"


def test_evaluate_takes_input_and_data_as_the_same_flag():
    from keras_unet.cli.evaluate import parse_args

    common = ["--model", "m", "--out", "o"]
    assert parse_args(["--input", "folder", *common]).data == parse_args(["--data", "folder", *common]).data == "folder"
