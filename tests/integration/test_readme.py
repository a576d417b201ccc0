"""The README's Python examples run as written: each block in a fresh process, the Deploy snippet where TensorFlow
cannot load."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, SAMPLE_DIR


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def export_with_mixed_int8(where):
    """The fixture export, with the model_int8_mixed.tflite the README ships converted from its SavedModel."""
    from keras_unet.export.convert import FILES, calibration_data, convert_tflite
    from keras_unet.infer.load import read_metadata

    shutil.copytree(REPO / "tests" / "fixtures" / "v0_1" / "export", where)
    _, config = read_metadata(where / "metadata.json")
    calibration = calibration_data(sorted(SAMPLE_DIR.glob("*.png"))[:4], config)
    (where / FILES["tflite_int8_mixed"]).write_bytes(convert_tflite(where / "saved_model", "tflite_int8_mixed",
                                                                    calibration))


def test_the_deploy_snippet_runs_with_litert_alone(tmp_path):
    snippet = next(block for block in python_blocks() if "EdgeSegmenter" in block)
    export_with_mixed_int8(tmp_path / "export")
    shutil.copy(SAMPLE_DIR / "phantom_000.png", tmp_path / "chest.png")
    fake = tmp_path / "no_tensorflow"
    for name in ("tensorflow", "keras"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this device')\n")
    check = "\nprint(masks.shape, masks.dtype, int(masks.sum() > 0), probs.shape)\n"
    out = subprocess.run([sys.executable, "-c", snippet + check], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{fake}:{REPO}", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "(512, 512, 3) uint8 1 (512, 512, 3)", out.stdout


@pytest.mark.slow
def test_every_python_block_runs(tmp_path):
    """Each block runs in a scratch folder that holds what the README's examples name (data/, export/, chest.png)."""
    blocks = python_blocks()
    assert len(blocks) >= 2
    (tmp_path / "data").symlink_to(REPO / "data")
    export_with_mixed_int8(tmp_path / "export")
    shutil.copy(SAMPLE_DIR / "phantom_000.png", tmp_path / "chest.png")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "KERAS_UNET_CACHE": str(tmp_path / "cache"),
           "HOME": str(tmp_path)}
    for number, block in enumerate(blocks, 1):
        out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=600)
        assert out.returncode == 0, f"README Python block {number} failed:\n{block}\n{out.stderr[-3000:]}"
