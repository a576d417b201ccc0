"""A run's model.keras is the network alone: it loads with `keras.saving.load_model(path)` (safe_mode=True, no
custom_objects) in a fresh interpreter that has Keras and not this package, and gives the library's outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from conftest import REPO, SAMPLE_DIR
from keras_unet.cli.train import main as train_main
from keras_unet.imaging.preprocess import prepare
from keras_unet.infer.load import load_predictor
from keras_unet.io.images import read_image

LOAD_WITH_KERAS_ALONE = """
import json, sys
import numpy as np
import keras
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
batch = np.load(sys.argv[2])
out = np.asarray(model(batch, training=False), dtype=np.float32)
np.save(sys.argv[3], out)
print(json.dumps({"ours": sorted(m for m in sys.modules if m.startswith("keras_unet")),
                  "compiled": bool(getattr(model, "compiled", False)), "optimizer": getattr(model, "optimizer", None) is not None}))
"""


def test_model_keras_loads_with_keras_alone_in_a_fresh_interpreter(tmp_path):
    run = tmp_path / "run"
    code = train_main(["--image-size", "64", "--depth", "2", "--base-filters", "4", "--epochs", "1",
                       "--out", str(run), "--cache-dir", str(tmp_path / "cache"), "--no-augment",
                       "--precision", "float32"])  # float32 as the predictor runs it on a CPU (auto: bf16 on some)
    assert code == 0
    predictor = load_predictor(run, refine=False)
    batch = np.stack([prepare(read_image(SAMPLE_DIR / f"phantom_00{i}.png"), predictor.config)[0]
                      for i in range(2)]).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    # -I: isolated mode, neither the checkout nor PYTHONPATH is on sys.path, so keras_unet cannot be imported
    out = subprocess.run([sys.executable, "-I", "-c", LOAD_WITH_KERAS_ALONE, str(run / "model.keras"),
                          str(tmp_path / "batch.npy"), str(tmp_path / "out.npy")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts == {"ours": [], "compiled": False, "optimizer": False}
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), predictor.network(batch), atol=1e-5)
    assert REPO not in [p for p in sys.path if p]  # sanity: the check above did not rely on this process

    # the run's model card says what the model is, with the run's own figures
    card = (run / "model_card.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert f"- images: {len(split['train'])} for training, {len(split['val'])} for validation" in card
    assert len(split["train"]) == 32 and len(split["val"]) == 8
    assert "- classes: left_clavicle, right_clavicle, rib" in card
    assert f"- Dice {metrics['val_dice']:.3f}, IoU {metrics['val_iou']:.3f}" in card
    assert "trained on synthetic phantoms only" in card
