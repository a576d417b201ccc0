"""`pip install .` packages every subpackage: a wheel built from the checkout, installed into a fresh virtual
environment and used from outside the checkout, imports each subpackage and runs each command's --help."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import REPO

SUBPACKAGES = ("io", "imaging", "data", "model", "infer", "train", "evaluate", "export", "cli")
COMMANDS = ("train", "evaluate", "predict", "export", "masks", "edge", "phantom")


def run(args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, args))}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, keras-unet, environment) of a fresh venv holding only the wheel (other packages: the system's)."""
    root = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist",
         REPO], cwd=root)
    wheels = list((root / "dist").glob("keras_unet-*.whl"))
    assert len(wheels) == 1
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheels[0]], cwd=root,
        env=env)
    return python, root / "venv" / "bin" / "keras-unet", env, root


def test_every_subpackage_imports_from_the_installed_wheel(installed):
    python, _, env, root = installed
    code = ("import importlib, keras_unet\n"
            f"for name in {SUBPACKAGES!r}:\n"
            "    module = importlib.import_module('keras_unet.' + name)\n"
            "    print(module.__file__)\n")
    files = run([python, "-c", code], cwd=root, env=env).stdout.split()
    assert len(files) == len(SUBPACKAGES)
    assert all("site-packages" in f and not f.startswith(str(REPO)) for f in files), files


def test_every_command_answers_help(installed):
    python, command, env, root = installed
    assert run([command, "--version"], cwd=root, env=env).stdout.startswith("keras-unet ")
    for name in COMMANDS:
        assert "usage:" in run([command, name, "--help"], cwd=root, env=env).stdout
    for name in ("masks", "edge", "phantom"):
        assert "usage:" in run([python, "-m", f"keras_unet.{name}", "--help"], cwd=root, env=env).stdout


@pytest.mark.slow
def test_the_installed_command_trains_evaluates_predicts_and_exports_outside_the_checkout(installed):
    """The README's promise for `pip install .`: every main command on the bundled sample, no checkout in sight."""
    _, command, env, root = installed
    work = root / "work"
    work.mkdir()
    env = {**env, "KERAS_UNET_CACHE": str(root / "cache")}
    trained = run([command, "train", "--epochs", "2", "--image-size", "64", "--depth", "2", "--base-filters", "4",
                   "--out", "run"], cwd=work, env=env, timeout=900)
    sample = root / "cache" / "sample-v2"
    assert f"is generated here: {sample}" in trained.stdout
    assert len(list(sample.glob("*.json"))) == 40 and (work / "run" / "model.keras").is_file()
    run([command, "evaluate", "--model", "run", "--data", sample, "--out", "report"], cwd=work, env=env)
    assert (work / "report" / "metrics.csv").is_file()
    run([command, "predict", "--model", "run", "--input", sample / "phantom_000.png", "--out", "pred"], cwd=work,
        env=env)
    assert (work / "pred" / "rib" / "phantom_000.png").is_file()
    run([command, "export", "--model", "run", "--out", "export", "--formats", "tflite,onnx"], cwd=work, env=env,
        timeout=900)
    assert (work / "export" / "model.tflite").is_file() and (work / "export" / "metadata.json").is_file()
