"""Class lists: parsing 'a,b,c', checking names, labels.txt files, and the left/right pairing of a flip."""

from __future__ import annotations

from pathlib import Path

from keras_unet.errors import ConfigError, DataError

IGNORED_LABELS = ("__ignore__", "_background_")  # labelme's labels.txt conventions, never classes
_FORBIDDEN = '/\\:*?"<>|\0'


def parse_classes(value) -> list[str]:
    """Class names from a list or a comma-separated string, blanks dropped; ConfigError when a name repeats."""
    if isinstance(value, str):
        value = value.split(",")
    names = [str(name).strip() for name in value or () if str(name).strip()]
    check_unique(names)
    return names


def check_unique(classes) -> None:
    """Raise ConfigError when a class name appears more than once."""
    classes = list(classes)
    repeated = sorted({name for name in classes if classes.count(name) > 1})
    if repeated:
        raise ConfigError(f"classes repeat a name: {', '.join(repeated)}")


def check_folder_names(classes, reserved=()) -> list[str]:
    """The parsed class list, refusing names that cannot be folder names (mask folders are named by class)."""
    classes = parse_classes(classes)
    if not classes:
        raise ConfigError("no classes given")
    for name in classes:
        if name in (".", "..", *reserved) or name.startswith(".") or any(c in name for c in _FORBIDDEN):
            raise ConfigError(f"class name {name!r} cannot be used as a folder name in the mask cache")
    return classes


def read_class_list(path) -> list[str]:
    """Class names from a labels.txt: one per line, without blanks, # comments, __ignore__ and _background_."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read the class list ({error})") from None
    classes: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#") or name in IGNORED_LABELS:
            continue
        if name in classes:
            raise DataError(path, f"line {number}: class {name!r} is listed twice")
        classes.append(name)
    if not classes:
        raise DataError(path, "lists no classes")
    return classes


def flip_permutation(classes) -> list | None:
    """Channel order after a horizontal flip (left_* <-> right_* swapped), or None when a pair is incomplete."""
    classes = list(classes)
    index = {name: i for i, name in enumerate(classes)}
    perm = []
    for name in classes:
        if name.startswith("left_"):
            partner = "right_" + name[len("left_"):]
        elif name.startswith("right_"):
            partner = "left_" + name[len("right_"):]
        else:
            partner = name
        if partner not in index:
            return None
        perm.append(index[partner])
    return perm
