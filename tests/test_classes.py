"""keras_unet.classes: parsing 'a,b,c', repeated and unusable names, labels.txt files, the left/right flip order."""

import pytest

from keras_unet.classes import check_folder_names, check_unique, flip_permutation, parse_classes, read_class_list
from keras_unet.errors import ConfigError, DataError

CLASSES = ["left_clavicle", "right_clavicle", "rib"]


def _error(error_type, call, *args) -> str:
    with pytest.raises(error_type) as info:
        call(*args)
    return str(info.value)


# -- parse_classes, check_unique ------------------------------------------------------------------------


def test_parse_classes_from_a_string_strips_and_drops_blanks():
    assert parse_classes("rib") == ["rib"]
    assert parse_classes(" left_clavicle , right_clavicle,,rib , ") == CLASSES
    assert parse_classes("") == [] and parse_classes(" , ,") == []


def test_parse_classes_from_a_list_keeps_the_order():
    assert parse_classes(["rib", " heart ", "", "  ", "lung"]) == ["rib", "heart", "lung"]
    assert parse_classes(("b", "a")) == ["b", "a"]  # not sorted
    assert parse_classes([3, 1]) == ["3", "1"]  # YAML may give numbers
    assert parse_classes(None) == [] and parse_classes([]) == []


def test_parse_classes_refuses_a_repeated_name():
    assert _error(ConfigError, parse_classes, "rib,heart,rib") == "classes repeat a name: rib"
    assert _error(ConfigError, parse_classes, ["rib", " rib "]) == "classes repeat a name: rib"  # equal once stripped


def test_check_unique_names_every_repeated_class_once_sorted():
    assert check_unique(CLASSES) is None
    assert check_unique([]) is None
    assert check_unique(iter(["a", "b"])) is None  # any iterable
    assert _error(ConfigError, check_unique, ["b", "a", "c", "b", "a", "b"]) == "classes repeat a name: a, b"


# -- check_folder_names ---------------------------------------------------------------------------------


def test_check_folder_names_returns_the_parsed_list():
    assert check_folder_names("rib, heart") == ["rib", "heart"]
    names = ["left_clavicle", "right clavicle", "rib-2"]
    assert check_folder_names(names) == names
    assert check_folder_names(["images"]) == ["images"]  # reserved only when the caller says so


def test_check_folder_names_needs_a_class():
    assert _error(ConfigError, check_folder_names, "") == "no classes given"
    assert _error(ConfigError, check_folder_names, [" ", ""]) == "no classes given"


@pytest.mark.parametrize("name", [".", "..", ".hidden", "a/b", "a\\b", "c:d", "x*", "why?", 'say"', "<a>", "a|b",
                                  "nul\0"])
def test_check_folder_names_refuses_names_that_cannot_be_folders(name):
    message = _error(ConfigError, check_folder_names, ["rib", name])
    assert message == f"class name {name!r} cannot be used as a folder name in the mask cache"


def test_check_folder_names_reserved_names():
    message = _error(ConfigError, check_folder_names, ["rib", "images"], ("images",))
    assert message == "class name 'images' cannot be used as a folder name in the mask cache"
    assert check_folder_names(["rib", "image"], ("images",)) == ["rib", "image"]


def test_check_folder_names_refuses_repeats():
    assert _error(ConfigError, check_folder_names, "rib,rib") == "classes repeat a name: rib"


# -- read_class_list ------------------------------------------------------------------------------------


def test_read_class_list(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("__ignore__\n_background_\n# bones\nleft_clavicle\n\n  right_clavicle  \n")
    assert read_class_list(path) == ["left_clavicle", "right_clavicle"]
    path.write_text("a\nb\na\n")
    assert _error(DataError, read_class_list, path) == f"{path}: line 3: class 'a' is listed twice"


def test_read_class_list_byte_order_mark_and_windows_line_ends(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffrib\r\nheart\r\n".encode("utf-8"))
    assert read_class_list(path) == ["rib", "heart"]


def test_read_class_list_errors(tmp_path):
    missing = tmp_path / "labels.txt"
    assert _error(DataError, read_class_list, missing) == f"{missing}: file not found"
    empty = tmp_path / "empty.txt"
    empty.write_text("__ignore__\n_background_\n# nothing else\n\n")
    assert _error(DataError, read_class_list, empty) == f"{empty}: lists no classes"
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"rib\n\xff\xfe\xfa\n")
    assert "cannot read the class list" in _error(DataError, read_class_list, binary)


# -- flip_permutation -----------------------------------------------------------------------------------


def test_flip_permutation():
    assert flip_permutation(CLASSES) == [1, 0, 2]
    assert flip_permutation(["left_lung", "heart"]) is None
    assert flip_permutation(["rib"]) == [0]


def test_flip_permutation_pairs_wherever_the_partners_stand():
    # right_lung <-> left_lung (0 <-> 3), left_clavicle <-> right_clavicle (2 <-> 4), heart stays (1)
    assert flip_permutation(["right_lung", "heart", "left_clavicle", "left_lung", "right_clavicle"]) == [3, 1, 4, 0, 2]
    assert flip_permutation([]) == []
    assert flip_permutation(["right_x"]) is None  # the partner must be there
    assert flip_permutation(["left_", "right_"]) == [1, 0]  # the empty suffix pairs too
    assert flip_permutation(["Left_lung", "Right_lung"]) == [0, 1]  # prefixes are case-sensitive: no pair, no swap
