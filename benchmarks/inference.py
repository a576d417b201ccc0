"""Inference latency (batch 1) and throughput (batch 8) of every runtime the project exports to, side by side.

A U-Net (depth 4, transposed convolutions, `--base` filters, default 12 as the project ships it) is trained with
keras_unet.train.run.train (project defaults, bce_dice loss) on 128-px phantom radiographs (keras_unet.data.phantom),
then exported with keras_unet.export.exporter.export_run at each benchmark size, which writes SavedModel, TFLite
float32 / float16 / int8 and ONNX and runs the parity gates on its validation images (Dice of the thresholded masks
against Keras, float >= 0.999, int8 >= 0.98). The runtimes, all with the machine's cores as threads:

  keras_predict  model.predict
  keras_call     a traced tf.function of the model (keras_unet.infer.runtimes.keras_network)
  keras_xla      the same with jit_compile=True (XLA)
                 (ratios are taken against the fastest of these three: the best float32 Keras does)
  saved_model    the SavedModel's `serve` endpoint (keras_unet.infer.runtimes.saved_model_network)
  tflite*        LiteRT with XNNPACK (keras_unet.infer.runtimes.TFLiteModel; batch 8 = 8 single-image invocations)
  onnx           ONNX Runtime (keras_unet.infer.runtimes.OnnxModel)

Achieved GFLOP/s count the convolutions analytically (common.conv_flops) and are compared with the float32
matrix-multiply peak measured in the same rounds as the runtimes with numpy and TensorFlow (2048 x 2048 products,
the better median), so that both see the same load.

    python benchmarks/inference.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import bench_config, conv_flops, interleave, median, tf_report

TILE = 128  # px: the model is trained on phantoms of this size, and sees anatomy at this scale at every size


def write_mosaics(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """`count` Labelme images of size x size px, each a grid of TILE-px phantoms (keras_unet.data.phantom.make_phantom).

    The U-Net is fully convolutional but learns the scale of the anatomy it is trained on; a mosaic shows a
    model trained at TILE px the same scale at 256 and 512 px, so its masks (and the parity gates) mean something."""
    import cv2
    import numpy as np

    from keras_unet.data.phantom import LABELS, make_phantom
    from keras_unet.io.labelme import labelme_document

    out = folder / f"mosaic_{size}"
    out.mkdir(parents=True, exist_ok=True)
    k = size // TILE
    for i in range(count):
        canvas, shapes = np.zeros((size, size), np.uint8), []
        for r in range(k):
            for c in range(k):
                image, tile_shapes = make_phantom(np.random.default_rng([seed, size, i, r, c]), TILE)
                canvas[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = image
                shapes += [{"label": t["label"], "points": (np.asarray(t["points"]) + [c * TILE, r * TILE]).tolist()}
                           for t in tile_shapes]
        name = f"mosaic_{i:03d}.png"
        cv2.imwrite(str(out / name), canvas)
        (out / name).with_suffix(".json").write_text(json.dumps(labelme_document(shapes, name, size, size)))
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return out


def train_run(report, folder: Path, args) -> Path:
    """A run directory (model.keras, config.json, split.json) trained at TILE px with the project's defaults."""
    from keras_unet.train.run import train

    data = write_mosaics(folder, args.train_images, TILE)
    config = bench_config(folder, TILE, args.base, 8, data=str(data), loss="bce_dice", epochs=args.epochs,
                          early_stopping=0, val_fraction=0.25, out=str(folder / "run_train"))
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):  # fit's per-epoch lines
        result = train(config, overwrite=True, log=lambda line: None)
    report.line(f"trained base {args.base} at {TILE} px on {args.train_images} phantoms for {result['epochs_run']} "
                f"epochs in {time.time() - start:.0f} s (validation Dice {result['val_dice']:.3f})")
    return Path(result["run_dir"])


def run_at_size(run: Path, folder: Path, size: int, count: int) -> Path:
    """A copy of the run whose config asks for `size` px and whose data are mosaics of that size."""
    from keras_unet.config import load_config

    out = folder / f"run_{size}"
    out.mkdir(exist_ok=True)
    shutil.copy(run / "model.keras", out / "model.keras")
    data = write_mosaics(folder, count, size, seed=1)
    config = load_config(run / "config.json")
    dataclasses.replace(config, image_size=size, data=str(data)).save(out / "config.json")
    return out


def export(report, run: Path, folder: Path, size: int, args) -> tuple[Path, dict]:
    from keras_unet.export.exporter import ExportOptions, export_run

    out = folder / f"export_{size}"
    options = ExportOptions(calibration_images=args.calibration, parity_images=args.parity, overwrite=True)
    start = time.time()
    metadata = export_run(run / "model.keras", out, options, log=lambda line: None)
    report.line(f"export {size} px: {time.time() - start:.0f} s; parity on {metadata['parity']['images']} "
                f"validation images, int8 calibration on {args.calibration}")
    for fmt, entry in metadata["artifacts"].items():
        p = entry["parity"]
        report.line(f"  parity {fmt:12s} Dice {p['dice']:.4f} (gate {p['min_dice']}) max diff "
                    f"{p['max_abs_diff']:.2e}: {'passed' if entry['parity_passed'] else 'FAILED'}")
    return out, metadata


def runtimes(model, export_dir: Path, threads: int, thread_variants: bool) -> dict:
    """{name: predict(batch) -> probabilities} for every runtime."""
    import tensorflow as tf

    from keras_unet.infer.runtimes import TFLiteModel
    from keras_unet.export.convert import FILES
    from keras_unet.infer.runtimes import keras_network, saved_model_network
    from keras_unet.infer.runtimes import OnnxModel

    xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
    run = {
        "keras_predict": lambda x: model.predict(x, batch_size=len(x), verbose=0),
        "keras_call": keras_network(model),
        "keras_xla": lambda x: xla(tf.constant(x)).numpy(),
        "saved_model": saved_model_network(export_dir / FILES["saved_model"]),
    }
    for fmt in ("tflite", "tflite_fp16", "tflite_int8"):
        run[fmt] = TFLiteModel(export_dir / FILES[fmt], num_threads=threads).predict
    run["onnx"] = OnnxModel(export_dir / FILES["onnx"], num_threads=threads).predict
    if thread_variants:  # what the runtimes choose by themselves (the project's behaviour before 2 threads)
        run["tflite_int8_1thread"] = TFLiteModel(export_dir / FILES["tflite_int8"], num_threads=1).predict
        run["onnx_ort_default"] = OnnxModel(export_dir / FILES["onnx"], num_threads=0).predict
    return run


def matmul_candidates(n: int = 2048) -> dict:
    """Fixed-size float32 matrix products in numpy and TensorFlow, timed with the runtimes (the peak)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    ta, tb = tf.constant(a), tf.constant(b)
    product = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(ta, tb)[:1, :1]))
    return {"matmul_numpy": lambda: a @ b, "matmul_tf": lambda: product().numpy()}


def measure(report, export_dir: Path, size: int, batch, args, threads: int) -> dict:
    import keras

    model = keras.saving.load_model(export_dir.parent / f"run_{size}" / "model.keras", compile=False)
    flops = conv_flops(model, size)
    report.line(f"inference {size} px: {flops / 1e9:.2f} GFLOP per image (convolutions)")
    run = runtimes(model, export_dir, threads, args.thread_variants)
    n_mm = 2048
    results = {}
    for n in (1, 8):
        x = batch[:n]
        reps = args.reps if n == 1 else args.reps_b8
        outputs = {}
        candidates = {name: (lambda name=name, f=f: outputs.__setitem__(name, f(x))) for name, f in run.items()}
        candidates.update(matmul_candidates(n_mm))
        if n == 1:
            warmup = 1
        else:  # every runtime ran at batch 1 already; only XLA compiles again for the new shape
            warmup = 0
            candidates["keras_xla"]()
        times = interleave(candidates, reps, warmup=warmup, log=report.line if args.verbose else None)
        peak = max(2.0 * n_mm ** 3 / median(times[k]) / 1e9 for k in ("matmul_numpy", "matmul_tf"))
        report.line(f"matmul float32 {n_mm}: numpy {2.0 * n_mm ** 3 / median(times['matmul_numpy']) / 1e9:.1f}, "
                    f"TensorFlow {2.0 * n_mm ** 3 / median(times['matmul_tf']) / 1e9:.1f} GFLOP/s "
                    f"(timed between the runtimes); peak {peak:.1f} GFLOP/s")
        keras_names = [k for k in run if k.startswith("keras")]
        reference = min(keras_names, key=lambda k: median(times[k]))
        ref = median(times[reference])
        report.line(f"reference {size} px b{n}: {reference} (the fastest Keras float32 call)")
        for name in run:
            seconds = times[name]
            t = median(seconds)
            gflops = flops * n / t / 1e9
            results[(name, n)] = t
            report.line(f"{name:20s} {size} px b{n}: {t * 1000:9.1f} ms/call {n / t:7.2f} images/s "
                        f"x{ref / t:5.2f} vs Keras ({median(times['keras_predict']) / t:5.2f} vs predict) "
                        f"{gflops:6.1f} GFLOP/s = {100 * gflops / peak:5.1f}% of peak "
                        f"(reps {min(seconds) * 1000:.0f}-{max(seconds) * 1000:.0f} ms, "
                        f"{median(times.cpu[name]) * 1000:.0f} CPU-ms)")
        fastest = min(run, key=lambda k: median(times[k]))
        best = flops * n / median(times[fastest]) / 1e9
        report.line(f"fastest {size} px b{n}: {fastest}, {best:.1f} GFLOP/s = {100 * best / peak:.1f}% of the "
                    f"{peak:.1f} GFLOP/s matmul peak")
        if n > 1:  # the parity of the timed outputs, on training and validation images alike
            from keras_unet.export.parity import compare

            classes = [f"class{c}" for c in range(outputs["keras_call"].shape[-1])]
            found = float((outputs["keras_call"] > 0.5).mean())
            figures = ", ".join(f"{name} {compare(outputs['keras_call'], outputs[name], classes)['dice']:.4f}"
                                for name in ("tflite_fp16", "tflite_int8", "onnx"))
            report.line(f"masks of the timed batch: {100 * found:.2f}% of the pixels foreground in Keras; "
                        f"worst-class Dice vs Keras: {figures}")
        for name, family in (("tflite_int8", "tflite_int8_vs_keras"), ("onnx", "onnx_vs_keras")):
            report.ratio(f"{family}_{size}_b{n}", ref / median(times[name]))
        results[("fastest", n)] = best / peak
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions and images (same measurements)")
    p.add_argument("--sizes", default="256,512", help="comma-separated image sizes (default 256,512)")
    from keras_unet.config import ModelConfig

    default_base = ModelConfig().base_filters
    p.add_argument("--base", type=int, default=default_base,
                   help=f"base_filters of the U-Net (default {default_base}, the project's default model)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions at batch 1 (default 7, --quick 2)")
    p.add_argument("--reps-b8", type=int, default=None, help="timed repetitions at batch 8 (default 5, --quick 1)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs at 128 px (default 40, --quick 8)")
    p.add_argument("--calibration", type=int, default=None, help="int8 calibration images (default 16, --quick 4)")
    p.add_argument("--parity", type=int, default=None, help="parity images (default 8, --quick 4)")
    p.add_argument("--thread-variants", action="store_true", default=None,
                   help="also time LiteRT int8 on 1 thread and ONNX Runtime with its own thread choice "
                        "(default on, --quick off)")
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: cores)")
    p.add_argument("--keep", help="copy the run and export folders here")
    p.add_argument("--verbose", action="store_true", help="print every repetition")
    args = p.parse_args(argv)
    q = args.quick
    args.reps = args.reps or (2 if q else 7)
    args.reps_b8 = args.reps_b8 or (1 if q else 5)
    args.epochs = args.epochs or (8 if q else 40)
    args.train_images = 16 if q else 32
    args.calibration = args.calibration or (4 if q else 16)
    args.parity = args.parity or (4 if q else 8)
    args.thread_variants = (not q) if args.thread_variants is None else args.thread_variants
    return args


def main(argv=None):
    args = parse_args(argv)
    report, threads = tf_report("inference", args)
    import numpy as np

    from keras_unet.export.parity import load_batch

    fractions = {}
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as folder:
        folder = Path(folder)
        run = train_run(report, folder, args)
        for size in (int(s) for s in args.sizes.split(",")):
            count = max(8, args.calibration + args.parity)  # val_fraction 0.25 of them for parity
            sized = run_at_size(run, folder, size, count)
            export_dir, _ = export(report, sized, folder, size, args)
            from keras_unet.config import load_config

            images = sorted((folder / f"mosaic_{size}").glob("*.png"))[:8]
            batch = load_batch(images, load_config(sized / "config.json"))
            results = measure(report, export_dir, size, np.asarray(batch, np.float32), args, threads)
            fractions.update({(size, n): results[("fastest", n)] for n in (1, 8)})
        if args.keep:
            shutil.copytree(folder, args.keep, dirs_exist_ok=True)
    for (size, n), fraction in fractions.items():
        report.ratio(f"fastest_vs_matmul_peak_{size}_b{n}", fraction)
    report.finish()


if __name__ == "__main__":
    main()
