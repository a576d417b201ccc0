"""The code's layout: imports run one way (ground -> io -> imaging -> data, model -> infer -> train, evaluate,
export -> cli), never in a circle; packages of one level never import each other; subpackage __init__ files stay
empty; the LiteRT-only and numpy-only parts import no TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "keras_unet"
GROUND = ("errors", "config", "classes", "run_folder", "progress")
LEVEL = {"io": 1, "imaging": 2, "data": 3, "model": 3, "infer": 4, "train": 5, "evaluate": 5, "export": 5, "serve": 5, "cli": 6, "api": 6}
SHIMS = ("masks", "edge", "phantom")  # `python -m keras_unet.X`: the command lines, kept at their old names
TOP_LEVEL = 7
MAX_LINES = 400


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def place(name: str) -> tuple[int, str]:
    """(level, unit): ground modules are one unit at level 0; a subpackage is one unit at its level."""
    parts = name.split(".")
    if len(parts) == 1:
        return TOP_LEVEL, "keras_unet"  # the package's face: lazy names only
    if parts[1] in GROUND:
        return 0, "ground"
    if parts[1] in SHIMS:
        return TOP_LEVEL, name
    return LEVEL[parts[1]], parts[1]


def imports_of(path: Path, known) -> set[str]:
    """The keras_unet modules a file imports, anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("keras_unet"):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def test_every_module_has_a_known_place():
    for name in modules():
        place(name)  # a KeyError names a folder the layout does not know


def test_imports_never_run_upwards_nor_sideways():
    wrong = []
    for source, targets in graph().items():
        level, unit = place(source)
        for target in targets:
            if target == "keras_unet":
                if source != "keras_unet" and "__version__" not in Path(modules()[source]).read_text():
                    wrong.append(f"{source} -> keras_unet (the package face)")
                continue
            to_level, to_unit = place(target)
            if to_level > level or (to_level == level and to_unit != unit):
                wrong.append(f"{source} (level {level}) -> {target} (level {to_level})")
    assert not wrong, "imports against the one-way rule:\n" + "\n".join(sorted(wrong))


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_subpackage_faces_are_empty_and_modules_short():
    for name, path in modules().items():
        text = path.read_text()
        if path.name == "__init__.py" and name != "keras_unet":
            assert text.strip() == "", f"{path} should stay empty"
        assert len(text.splitlines()) <= MAX_LINES, f"{path}: {len(text.splitlines())} lines, over {MAX_LINES}"


@pytest.mark.parametrize("module", [
    "keras_unet", "keras_unet.edge", "keras_unet.cli.edge", "keras_unet.infer.predictor", "keras_unet.infer.runtimes",
    "keras_unet.infer.edge", "keras_unet.infer.load", *[f"keras_unet.io.{m}" for m in ("files", "images", "dicom", "labelme")],
    *[f"keras_unet.imaging.{m}" for m in ("preprocess", "postprocess", "crops", "metrics", "overlay")],
])
def test_importing_pulls_in_no_tensorflow(module):
    code = (f"import sys, {module}\n"
            "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {module} imported {out.stdout.strip()}"


def test_the_edge_runner_works_without_tensorflow_installed(tmp_path):
    """A tensorflow package that fails on import stands in for a machine without TensorFlow."""
    fake = tmp_path / "fake"
    for name in ("tensorflow", "keras"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    code = ("from keras_unet.edge import EdgeSegmenter, segment_files\n"
            "from keras_unet.cli.edge import main\n"
            "print(main(['--help']) if False else 'ok')")
    env = {"PYTHONPATH": f"{fake}{':'}{REPO}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
