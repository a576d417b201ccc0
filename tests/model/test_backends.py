"""The U-Net and its losses on the JAX backend: README says the model is pure Keras 3 and not tied to TensorFlow.

Keras picks its backend once per process, so the JAX run is a child process with KERAS_BACKEND=jax; it prints
what it measured as JSON (an exception in one stage is kept under errors, and the other stages still run) and
the tests below judge it. Skipped when jax is not installed.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO

CHILD = r"""
import json, sys, traceback
import numpy as np
import keras
from keras_unet.model.losses import BceDiceLoss, DiceLoss, DiceScore, segmentation_metrics
from keras_unet.model.unet import build_unet

out = {"backend": keras.backend.backend(), "errors": {}}


def stage(name):
    # run one stage; on an exception keep its last line under errors[name] and skip the stage, not the rest
    def run(fn):
        try:
            fn()
        except Exception as error:
            out["errors"][name] = (traceback.format_exception_only(error)[-1].strip())[:500]
    return run


keras.utils.set_random_seed(0)
model = build_unet(2, depth=2, base_filters=4)
rng = np.random.default_rng(0)
x = rng.random((2, 32, 32, 1), dtype="float32")
y = np.zeros((2, 32, 32, 2), "float32")
y[0, 8:24, 8:24, 0] = 1.0
y[1, 4:12, 4:28, 1] = 1.0


@stage("forward")
def _():
    probs = np.asarray(model.predict(x, verbose=0))
    out["shape"] = list(probs.shape)
    out["in_unit_range"] = bool(np.all((probs >= 0) & (probs <= 1)))
    out["output_type"] = type(model(x)).__module__  # a jax array when the model really ran on jax


@stage("losses")
def _():
    # the losses on tiny tensors with hand values (the same cases as test_losses.py, here on jax)
    t = np.array([[1, 1], [0, 0]], "float32")[None, :, :, None]
    p = np.array([[1, 0], [1, 0]], "float32")[None, :, :, None]
    out["dice_loss"] = float(DiceLoss()(t, p))
    q = np.array([[0.9, 0.2], [0.3, 0.1]], "float32")[None, :, :, None]
    out["bce_dice_loss"] = float(BceDiceLoss()(t, q))
    score = DiceScore(1)
    score.update_state(t, p)
    out["dice_score"] = float(score.result())


@stage("fuse")
def _():
    from keras_unet.model.fused import fuse_batch_norm
    out["fused_layers"] = fuse_batch_norm(model)  # TensorFlow's fused kernel only: nothing to do on jax


@stage("train")
def _():
    model.compile(keras.optimizers.Adam(1e-2), loss=BceDiceLoss(), metrics=segmentation_metrics(["a", "b"]))
    before = [np.array(w) for w in model.trainable_weights]
    logs = model.train_on_batch(x, y, return_dict=True)
    after = [np.array(w) for w in model.trainable_weights]
    out["logs"] = {k: float(v) for k, v in logs.items()}
    out["trainable"] = len(before)
    out["changed"] = sum(not np.array_equal(a, b) for a, b in zip(before, after))


@stage("save_load")
def _():
    path = sys.argv[1]
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)  # no custom_objects: the registered names
    out["loaded_loss"] = type(loaded.loss).__name__
    difference = np.asarray(loaded.predict(x, verbose=0)) - np.asarray(model.predict(x, verbose=0))
    out["max_output_difference"] = float(np.max(np.abs(difference)))


print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install jax)")
    path = tmp_path_factory.mktemp("jax") / "model.keras"
    # XLA's CPU compiler at its lowest optimisation level: the same numbers, and ~6 s instead of ~45 s here (each
    # weight initialiser and the train step is compiled once; at the default level each compile took about 1 s)
    xla = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]))
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": xla, "PYTHONPATH": pythonpath}
    result = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):]), path


def test_the_child_really_ran_on_jax(jax_run):
    out, _ = jax_run
    assert "forward" not in out["errors"], out["errors"]
    assert out["backend"] == "jax"
    assert out["output_type"].startswith("jax"), out["output_type"]


def test_forward_pass_shape_and_range(jax_run):
    out, _ = jax_run
    assert "forward" not in out["errors"], out["errors"]
    assert out["shape"] == [2, 32, 32, 2] and out["in_unit_range"]


def test_losses_and_metric_give_the_hand_values_on_jax(jax_run):
    out, _ = jax_run
    assert "losses" not in out["errors"], out["errors"]
    # DiceLoss: intersection 1, |t| 2, |p| 2: 1 - (2*1 + 1) / (4 + 1) = 0.4
    assert out["dice_loss"] == pytest.approx(0.4, abs=1e-6)
    # BceDiceLoss on p = [[0.9, 0.2], [0.3, 0.1]], truth [[1, 1], [0, 0]]:
    # BCE = -(ln 0.9 + ln 0.2 + ln 0.7 + ln 0.9) / 4 = (0.105361 + 1.609438 + 0.356675 + 0.105361) / 4 = 0.544209
    # Dice = (2 * 1.1 + 1) / (2 + 1.5 + 1) = 3.2 / 4.5 = 0.711111 -> loss 0.544209 + 0.288889 = 0.833098
    assert out["bce_dice_loss"] == pytest.approx(0.833098, abs=1e-5)
    # DiceScore, thresholded: tp 1, fp 1, fn 1 -> 2 / 4
    assert out["dice_score"] == pytest.approx(0.5)


def test_one_train_step_is_finite_and_moves_every_weight(jax_run):
    out, _ = jax_run
    assert "train" not in out["errors"], out["errors"]
    logs = out["logs"]
    assert {"loss", "dice", "iou", "dice_a", "dice_b"} <= set(logs)
    assert all(math.isfinite(v) for v in logs.values()), logs
    assert 0.0 < logs["loss"] < 5.0
    assert out["trainable"] > 0 and out["changed"] == out["trainable"]


def test_save_and_safe_mode_load_give_the_same_outputs(jax_run):
    out, path = jax_run
    assert "save_load" not in out["errors"], out["errors"]
    assert path.is_file()
    assert out["loaded_loss"] == "BceDiceLoss"
    assert out["max_output_difference"] <= 1e-6


def test_fused_batch_norm_leaves_the_jax_model_alone(jax_run):
    out, _ = jax_run
    assert "fuse" not in out["errors"], out["errors"]
    assert out["fused_layers"] == 0
