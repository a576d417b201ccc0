"""The masks command (keras_unet.cli.masks, keras_unet.data.masks): OUT/<class>/<image stem>.png and one-line errors."""

import numpy as np
import pytest

from keras_unet.cli.masks import main
from keras_unet.io.images import read_image
from labelme_factory import gradient, small_dataset, write_image


@pytest.fixture
def dataset(tmp_path):
    return small_dataset(tmp_path / "data")


def test_cli_writes_class_folders(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(dataset), "--classes", "rib,clavicle", "--out", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "clavicle/a.png", "clavicle/sub__b.png", "rib/a.png", "rib/sub__b.png",
    ]
    rib = read_image(out / "rib" / "a.png")
    assert rib.shape == (20, 30) and set(np.unique(rib)) == {0, 255} and (rib > 0).sum() == 100
    assert "skipped labels not in the class list: heart x2" in capsys.readouterr().out


def test_cli_errors(dataset, tmp_path, capsys):
    assert main([str(dataset), "--classes", "rib", "--out", str(dataset)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main([str(tmp_path / "missing"), "--classes", "rib", "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    write_image(dataset / "a.png", gradient(21, 30))
    assert main([str(dataset), "--classes", "rib", "--out", str(tmp_path / "o")]) == 2
    assert "image is 30x21 but the annotation says 30x20" in capsys.readouterr().err
