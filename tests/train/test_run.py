"""A real (tiny) training run end to end: run directory, config, resume, refusal to overwrite, CLI."""

import csv
import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO, SAMPLE_DIR
from keras_unet.config import Config, load_config, merge
from keras_unet.errors import ConfigError
from keras_unet.io.files import write_json_atomic
from keras_unet.train.run import prepare_run_dir, resolve_precision, train


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Six sample images with their Labelme files."""
    folder = tmp_path_factory.mktemp("data")
    for json_path in sorted(SAMPLE_DIR.glob("*.json"))[:6]:
        shutil.copy(json_path, folder)
        shutil.copy(json_path.with_suffix(".png"), folder)
    shutil.copy(SAMPLE_DIR / "labels.txt", folder)
    return folder


def tiny_config(data, out, cache, **overrides):
    config = Config(data=str(data), out=str(out), cache_dir=str(cache), image_size=64, batch_size=2, epochs=2,
                    val_fraction=0.34)
    return merge(config, {"model.depth": 2, "model.base_filters": 4, **overrides})


def test_two_epoch_run_writes_a_complete_run_directory(small_data, tmp_path):
    out = tmp_path / "run"
    # no foreground-prior bias: the outputs start near 0.5, so every class has predicted pixels after two epochs
    # and the validation Dice checked below is not 0 = 0
    config = tiny_config(small_data, out, tmp_path / "cache", **{"model.prior_bias": False})
    result = train(config, log=lambda *a: None)
    for name in ("model.keras", "config.json", "history.csv", "curves.png", "metrics.json", "split.json"):
        assert (out / name).is_file(), name
    assert (out / "logs").is_dir() and not (out / "backup").exists()
    saved = load_config(out / "config.json")
    assert saved.classes == ["left_clavicle", "right_clavicle", "rib"]
    # the default precision "auto" is resolved when the run starts: float32 here, mixed_float16 on a GPU machine
    assert saved.precision == resolve_precision("auto") and saved.normalization.method == "percentile"
    assert result["epochs_run"] == 2
    assert json.loads((out / "metrics.json").read_text()) == result
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 2 and len(split["train"]) == 4 and not set(split["val"]) & set(split["train"])
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert model.predict(np.zeros((1, 64, 64, 1), "float32"), verbose=0).shape == (1, 64, 64, 3)
    # the reported validation Dice is the saved model's on the validation images, recomputed here in numpy
    dice, per_class = _numpy_val_dice(model, saved, small_data, split["val"], tmp_path / "cache")
    assert all(v > 0 for v in per_class)
    assert result["val_dice"] == pytest.approx(dice, abs=1e-4)
    assert result["val_dice_per_class"] == pytest.approx(dict(zip(saved.classes, per_class)), abs=1e-4)


def _numpy_val_dice(model, config, data, stems, cache):
    """Mean and per-class Dice of the model's masks (> 0.5) on the named images at network size, pooled over them."""
    from keras_unet.data.samples import prepare_samples
    from keras_unet.imaging.preprocess import letterbox, prepare
    from keras_unet.io.images import read_image

    samples = {s.stem: s for s in prepare_samples(data, config.classes, cache_dir=cache, log=None)}
    tp = fp = fn = 0
    for stem in stems:
        sample = samples[stem]
        x, _ = prepare(read_image(sample.image_path), config)
        truth = np.stack([read_image(p) / 255.0 for p in sample.mask_paths], axis=-1)
        y = letterbox(truth.astype(np.float32), config.image_size)[0] > 0.5
        pred = model.predict(x[None], verbose=0)[0] > 0.5
        tp, fp, fn = tp + (y & pred).sum((0, 1)), fp + (~y & pred).sum((0, 1)), fn + (y & ~pred).sum((0, 1))
    denominator = 2 * tp + fp + fn
    per_class = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)
    return float(per_class.mean()), [float(v) for v in per_class]


TRAIN_STEMS = ["phantom_000", "phantom_002", "phantom_003", "phantom_005"]
VAL_STEMS = ["phantom_001", "phantom_004"]


@pytest.fixture(scope="module")
def stalled_run(tmp_path_factory):
    """A run on a data folder with train/ and val/ subfolders (val_fraction would pick 2 of 6 at random otherwise),
    early_stopping 1 of 4 epochs, and a validation score that cannot improve: a learning rate of 1e-30 leaves every
    weight as it is, and without batch norm there are no moving statistics to change the validation outputs."""
    root = tmp_path_factory.mktemp("split")
    data = root / "data"
    for folder, stems in (("train", TRAIN_STEMS), ("val", VAL_STEMS)):
        (data / folder).mkdir(parents=True)
        for stem in stems:
            for suffix in (".json", ".png"):
                shutil.copy(SAMPLE_DIR / f"{stem}{suffix}", data / folder)
    shutil.copy(SAMPLE_DIR / "labels.txt", data)
    config = tiny_config(data, root / "run", root / "cache", epochs=4, early_stopping=1, learning_rate=1e-30,
                         val_fraction=0.5, **{"model.batch_norm": False})
    return root / "run", train(config, log=lambda *a: None)


def test_train_and_val_subfolders_are_used_as_given(stalled_run):
    out, _ = stalled_run
    split = json.loads((out / "split.json").read_text())
    assert split == {"train": TRAIN_STEMS, "val": VAL_STEMS}


def test_early_stopping_ends_the_run_when_the_validation_dice_stops_improving(stalled_run):
    out, result = stalled_run
    with open(out / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len({row["val_dice"] for row in rows}) == 1  # the premise: the score never moved
    # epoch 0 sets the best score, epoch 1 does not beat it: patience 1 is used up, so 2 of the 4 epochs run
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert result["epochs_run"] == 2 == json.loads((out / "metrics.json").read_text())["epochs_run"]


def test_existing_run_directory_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.keras").write_text("earlier result")
    with pytest.raises(ConfigError, match="already exists"):
        prepare_run_dir(out, Config(), overwrite=False)
    assert (out / "model.keras").read_text() == "earlier result"
    prepare_run_dir(out, Config(), overwrite=True)
    assert not (out / "model.keras").exists()


def test_interrupted_run_resumes_only_with_same_settings(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "backup").mkdir()
    write_json_atomic(out / "config.json", Config(epochs=5).to_dict())
    assert prepare_run_dir(out, Config(epochs=5), overwrite=False) is True
    with pytest.raises(ConfigError, match="interrupted run with other settings"):
        prepare_run_dir(out, Config(epochs=6), overwrite=False)


def test_resume_finishes_the_planned_epochs(small_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = tiny_config(small_data, out, tmp_path / "cache", epochs=3)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(keras.callbacks, "TensorBoard", lambda *a, **k: Interrupt())  # the run's one extra callback
        with pytest.raises(KeyboardInterrupt):
            train(config, log=lambda *a: None)
    assert (out / "backup").exists() and (out / "model.keras").exists()
    result = train(tiny_config(small_data, out, tmp_path / "cache", epochs=3), log=lambda *a: None)
    epochs = [int(float(line.split(",")[0])) for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [0, 1, 2] and result["epochs_run"] == 3


@pytest.mark.parametrize("flags, cpu", [("fpu avx2 fma", "float32"), ("avx2 avx512f avx512_bf16", "mixed_bfloat16")])
def test_auto_precision_is_mixed_float16_with_a_gpu_else_bf16_on_a_bf16_cpu_else_float32(monkeypatch, flags, cpu):
    from keras_unet.train import run

    monkeypatch.setattr(run, "read_cpuinfo", lambda: f"model name\t: a CPU\nflags\t\t: {flags}\n")
    for gpus, expected in ((0, cpu), (1, "mixed_float16"), (2, "mixed_float16")):
        monkeypatch.setattr(run, "gpu_count", lambda gpus=gpus: gpus)
        assert resolve_precision("auto") == expected, gpus
        assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"  # a named policy is kept as it is
        assert resolve_precision("float32") == "float32"


def test_strategy_is_multi_worker_with_tf_config_mirrored_over_gpus_else_the_default(monkeypatch):
    import tensorflow as tf

    from keras_unet.train import run

    built = []

    def stub(name):
        class Stub:
            def __init__(self, *args, **kwargs):
                built.append(name)
        return Stub

    monkeypatch.setattr(tf.distribute, "MirroredStrategy", stub("mirrored"))
    monkeypatch.setattr(run, "multi_worker_strategy", lambda cluster: built.append(("multi-worker", cluster.index)))
    monkeypatch.delenv("TF_CONFIG", raising=False)
    default = tf.distribute.get_strategy()  # the one-device strategy outside any scope
    for gpus in (0, 1):
        monkeypatch.setattr(run, "gpu_count", lambda gpus=gpus: gpus)
        assert run.select_strategy() is default and built == [], gpus
    monkeypatch.setattr(run, "gpu_count", lambda: 2)
    assert type(run.select_strategy()).__name__ == "Stub" and built == ["mirrored"]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker",
                                                                                                 "index": 1}}))
    for gpus in (0, 2):  # a cluster wins over the local GPUs (train.distributed makes its strategy)
        built.clear()
        monkeypatch.setattr(run, "gpu_count", lambda gpus=gpus: gpus)
        run.select_strategy()
        assert built == [("multi-worker", 1)], gpus
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG: not valid JSON"):
        run.select_strategy()


def test_cosine_schedule_starts_at_the_learning_rate_and_ends_at_five_percent_of_it():
    from keras_unet.train.run import compile_model

    config = merge(Config(classes=["a", "b"], image_size=64, epochs=3, learning_rate=0.01),
                   {"model.depth": 2, "model.base_filters": 4})
    optimizer = compile_model(config, steps_per_epoch=4).optimizer  # 3 epochs x 4 steps: decay over 12 steps
    # by hand: lr(t) = 0.01 (0.05 + 0.95 (1 + cos(pi t / 12)) / 2)
    for step, expected in ((0, 0.01), (6, 0.00525), (12, 0.0005), (40, 0.0005)):
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-5), step


def test_compile_model_runs_batch_norm_through_the_fused_kernel():
    from keras_unet.train.run import compile_model

    config = merge(Config(classes=["a"], image_size=32), {"model.depth": 2, "model.base_filters": 4})
    model = compile_model(config, steps_per_epoch=1, jit_compile=False)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 10 and all(getattr(layer, "_keras_unet_fused", False) for layer in norms)


def test_cli_reports_bad_settings_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "--image-size", "100", "--out", str(tmp_path / "r")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: image_size 100 must be a multiple of")
    assert "Traceback" not in proc.stderr


def test_cli_flags_override_config_file(small_data, tmp_path):
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("image_size: 64\nepochs: 1\nbatch_size: 3\nmodel:\n  depth: 2\n  base_filters: 4\n")
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", str(cfg), "--data", str(small_data), "--batch-size", "2",
         "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation Dice" in proc.stdout
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["batch_size"] == 2 and saved["epochs"] == 1 and saved["model"]["depth"] == 2


def test_foreground_fractions_and_prior_bias(tmp_path):
    from keras_unet.data.samples import Sample
    from keras_unet.io.images import write_png
    from keras_unet.model.unet import model_from_config
    from keras_unet.train.run import foreground_fractions, set_prior_bias

    samples = []
    for k, (a, b) in enumerate([(10, 0), (30, 5)]):  # foreground pixels of class a / class b in a 10x10 mask
        paths = []
        for name, count in (("a", a), ("b", b)):
            plane = np.zeros(100, np.uint8)
            plane[:count] = 255
            paths.append(tmp_path / f"{name}{k}.png")
            write_png(paths[-1], plane.reshape(10, 10))
        samples.append(Sample(stem=str(k), image_path=tmp_path / "x.png", mask_paths=paths, source=tmp_path))
    fractions = foreground_fractions(samples)
    np.testing.assert_allclose(fractions, [40 / 200, 5 / 200])
    config = merge(Config(classes=["a", "b"], image_size=32), {"model.depth": 2, "model.base_filters": 4})
    model = model_from_config(config)
    set_prior_bias(model, fractions)
    probs = 1 / (1 + np.exp(-np.asarray(model.get_layer("logits").bias)))
    np.testing.assert_allclose(probs, [0.2, 0.025], rtol=1e-5)
    set_prior_bias(model, [0.0, 1.0])  # empty and full classes are clipped, never infinite
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(model.get_layer("logits").bias))), [1e-4, 0.5], rtol=1e-4)


def test_refine_stage_trains_on_crops_after_the_first_and_resumes_alone(small_data, tmp_path):
    from keras_unet.infer.load import load_predictor
    from keras_unet.infer.predictor import RefinedPredictor

    out = tmp_path / "run"
    overrides = {"epochs": 1, "refine.enabled": True, "refine.image_size": 32, "refine.epochs": 1,
                 "refine.classes": ["left_clavicle", "right_clavicle"]}
    lines = []
    result = train(tiny_config(small_data, out, tmp_path / "cache", **overrides), log=lines.append)
    stage = load_config(out / "refine" / "config.json")
    assert stage.image_size == 32 and stage.crops.classes == ["left_clavicle", "right_clavicle"]
    assert not stage.refine.enabled and stage.model.base_filters == 4
    assert "8 training crops from 4 images" in "\n".join(lines)  # both clavicles of each of the 4 training images
    assert json.loads((out / "metrics.json").read_text())["refine"]["epochs_run"] == 1 == result["refine"]["epochs_run"]
    predictor = load_predictor(out)
    assert isinstance(predictor, RefinedPredictor) and predictor.fine.config.image_size == 32
    assert predictor.predict_probs(np.zeros((80, 60), np.uint8)).shape == (80, 60, 3)
    assert predictor.fine.classes == ["structure"] and result["refine"]["val_dice_per_class"].keys() == {"structure"}
    assert not isinstance(load_predictor(out, refine=False), RefinedPredictor)

    first_model = (out / "model.keras").stat().st_mtime_ns
    shutil.rmtree(out / "refine")  # as if killed before the refine stage finished
    lines.clear()
    train(tiny_config(small_data, out, tmp_path / "cache", **overrides), log=lines.append)
    stage_lines = [line for line in lines if not line.startswith(("post-processing from the training masks",
                                                                  "refine stage from the training masks"))]
    assert "first stage already finished" in stage_lines[0] and (out / "refine" / "model.keras").is_file()
    assert (out / "model.keras").stat().st_mtime_ns == first_model


def test_refine_blend_is_checked():
    config = Config(classes=["left_clavicle", "right_clavicle"])
    config.refine.blend = 1.5
    with pytest.raises(ConfigError, match=r"refine.blend must be in \[0, 1\]"):
        config.validate()
    config.refine.blend = 0.5
    config.validate()


@pytest.mark.slow  # 31 s: the default suite stays under 10 minutes on slower CPUs; .ci/run runs it with the slow tests
def test_self_training_trains_a_teacher_labels_the_unlabelled_images_and_resumes(small_data, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for png in sorted(SAMPLE_DIR.glob("*.png"))[6:9]:
        shutil.copy(png, unlabelled)
    out = tmp_path / "run"
    overrides = {"epochs": 1, "self_train.data": str(unlabelled), "self_train.epochs": 2}
    lines = []
    result = train(tiny_config(small_data, out, tmp_path / "cache", **overrides), log=lines.append)
    assert result["teacher"]["epochs_run"] == 1 and result["epochs_run"] == 2 and result["pseudo_labelled"] == 3
    assert (out / "teacher" / "model.keras").is_file() and (out / "model.keras").is_file()
    assert sorted(p.name for p in (out / "pseudo" / "images").iterdir()) == sorted(
        p.name for p in unlabelled.iterdir())
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 4 + 3 and len(split["val"]) == 2  # 4 labelled + 3 pseudo-labelled
    assert json.loads((out / "teacher" / "split.json").read_text())["val"] == split["val"]
    saved = load_config(out / "config.json")
    assert saved.epochs == 1 and saved.self_train.epochs == 2  # the run's settings, not the stage's
    teacher = load_config(out / "teacher" / "config.json")
    assert not teacher.self_train.data and teacher.epochs == 1
    assert [line.split()[0] for line in lines if line.startswith(("run:", "resuming:"))] == ["run:", "run:"]

    (out / "metrics.json").unlink()  # as if killed while the self-trained model was training
    teacher_model = out / "teacher" / "model.keras"
    teacher_model.write_bytes(b"not a model")  # finished pseudo-labels: the teacher is neither retrained nor loaded
    lines.clear()
    train(tiny_config(small_data, out, tmp_path / "cache", **overrides), log=lines.append)
    assert any("teacher already finished" in line for line in lines)
    assert any(line.startswith(f"resuming: {out} ") for line in lines)  # the student's stage
    assert teacher_model.read_bytes() == b"not a model"
    assert json.loads((out / "metrics.json").read_text())["pseudo_labelled"] == 3


def test_self_training_refuses_the_labelled_folder_and_a_missing_one(small_data, tmp_path):
    from keras_unet.train.pretrain import check_start

    config = tiny_config(small_data, tmp_path / "run", tmp_path / "cache")
    config.self_train.data = str(small_data)
    with pytest.raises(ConfigError, match="--self-train names the labelled --data folder itself"):
        check_start(config)
    config.self_train.data = str(tmp_path / "gone")
    with pytest.raises(ConfigError, match="gone: --self-train folder not found"):
        check_start(config)
