"""The shipped recipes in configs/: each loads, validates and is documented; bad files give one-line errors."""

import pytest

from conftest import REPO
from keras_unet.config import load_config
from keras_unet.errors import ConfigError

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_shipped_configs_are_the_two_recipes():
    assert [p.name for p in SHIPPED] == ["jsrt_clavicles.yaml", "small_data.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads_and_validates(path):
    config = load_config(path).validate()
    assert config.refine.enabled, f"{path.name}: both recipes train a refine stage"
    assert f"configs/{path.name}" in (REPO / "README.md").read_text(), f"README does not mention {path.name}"


def test_full_data_recipe_settings():
    """The settings docs/experiments.md measured for issue 7 (a change here needs a new measurement)."""
    config = load_config(REPO / "configs" / "jsrt_clavicles.yaml")
    assert (config.image_size, config.epochs, config.model.base_filters, config.model.depth) == (256, 40, 16, 4)
    assert (config.checkpoint, config.early_stopping) == ("last", 0)
    assert config.refine.enabled and (config.refine.image_size, config.refine.epochs) == (192, 60)
    assert config.refine.blend == 0.5


def test_unknown_setting_names_the_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("epochs: 3\nrefine:\n  epoch: 5\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: refine: unknown setting\(s\) epoch"):
        load_config(path)
