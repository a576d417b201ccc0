"""Make the fixed JSRT fold-1 splits of docs/experiments.md as symlink folders (nothing is copied).

python experiments/jsrt_splits.py ../shared/datasets/jsrt-scr-fold1 /tmp/jsrt_splits

Writes, under OUT, for train.py (Labelme JSON + image links): train104val20/{train,val} (fold 1),
train104val20b, train104val20c and train104val20d (folds 2-4) and seed13/{train,val}; for evaluate.py
(images/ + masks/<class>/): val20, val20b, val20c, val20d, test50 and rest111; and pool/ (images only) for --rank.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path


FOLDS = ("", "b", "c", "d")  # suffixes of the full-data folds' split names: train104<fold> / val20<fold>


def stems(source: Path) -> list[str]:
    """The annotated stems of the dataset, in the fixed shuffled order every split is cut from."""
    order = sorted(p.stem for p in source.glob("*.json"))
    random.Random(0).shuffle(order)
    return order


def splits(order: list[str]) -> dict[str, list[str]]:
    """Name -> stems: seed13 | pool (61) | test50, and train104 / val20 with val20 the last 20 of test50;
    fold 2 of the full-data recipe: val20b = the 20 before val20, train104b = the other 104;
    folds 3 and 4, checks no setting was chosen on: val20c = order[44:64] and val20d = order[24:44] (both inside
    pool), train104c / train104d = the other 104."""
    return {"seed13": order[:13], "pool": order[13:74], "test50": order[74:], "rest111": order[13:],
            "train104": order[:104], "val20": order[104:],
            "train104b": order[:84] + order[104:], "val20b": order[84:104],
            "train104c": order[:44] + order[64:], "val20c": order[44:64],
            "train104d": order[:24] + order[44:], "val20d": order[24:44]}


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        os.symlink(target.resolve(), link)


def labelme_folder(source: Path, names: list[str], out: Path) -> None:
    """Links each stem's Labelme JSON and its image into out."""
    for stem in names:
        for path in source.glob(stem + ".*"):
            _link(path, out / path.name)


def eval_folder(source: Path, names: list[str], out: Path) -> None:
    """Links images/ and masks/<class>/ for evaluate.py."""
    for stem in names:
        _link(source / f"{stem}.png", out / "images" / f"{stem}.png")
        for cls in sorted(p.name for p in (source / "masks").iterdir() if p.is_dir()):
            _link(source / "masks" / cls / f"{stem}.png", out / "masks" / cls / f"{stem}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    a = p.parse_args()
    s = splits(stems(a.source))
    for fold in FOLDS:
        labelme_folder(a.source, s[f"train104{fold}"], a.out / f"train104val20{fold}" / "train")
        labelme_folder(a.source, s[f"val20{fold}"], a.out / f"train104val20{fold}" / "val")
    labelme_folder(a.source, s["seed13"], a.out / "seed13" / "train")
    labelme_folder(a.source, s["seed13"][:3], a.out / "seed13" / "val")
    for name in (*(f"val20{fold}" for fold in FOLDS), "test50", "rest111"):
        eval_folder(a.source, s[name], a.out / name)
    for stem in s["pool"]:
        _link(a.source / f"{stem}.png", a.out / "pool" / f"{stem}.png")
    for name, names in s.items():
        print(f"{name}: {len(names)} images")


if __name__ == "__main__":
    main()
