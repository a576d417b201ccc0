"""End-to-end edge latency: one 1024 px radiograph file to masks on disk, for every exported artefact, on one core.

For each .tflite (LiteRT) and .onnx (ONNX Runtime) artefact of an export folder (both stages when the export holds
the refine stage), a fresh subprocess pinned to ONE core (os.sched_setaffinity) and then to two, importing only the
edge runner (keras_unet.infer.edge: no TensorFlow), runs the whole path as `python -m keras_unet.edge` does:
decode the file, normalise, letterbox, the first stage, the crops and the refine stage, unletterbox, post-processing,
write one PNG per class; with flip TTA off and on. Each configuration is timed `--reps` times (default 20) after
3 warm-up runs; the lines give the median and a breakdown by step (the networks and the steps around them timed
by wrapping the functions the chain calls, keras_unet.infer.predictor), and the peak resident memory of the edge
process (ru_maxrss of the subprocess, after loading the model and running it).

The image: a JSRT radiograph from ../shared/datasets/jsrt-scr-fold1 when that folder is there (read in place,
never copied into the repository), else a synthetic 1024 px phantom (keras_unet.data.phantom).

    python benchmarks/edge.py --export EXPORT_DIR [--reps 20] [--formats tflite_int8,onnx] [--cores 1,2]
    python benchmarks/edge.py --networks [--reps 20] [--cores 1,2]

--networks times one network call (batch 1) instead, in every format, of untrained U-Nets shaped as the JSRT
recipe's two stages (256 px, 2 outputs; 192 px crops, 1 output; base 16) and as the default model at 512 px
(base 12), pinned the same way, with the fastest float32 Keras call (a traced tf.function) as the reference:
ratios fastest_int8_vs_keras_<shape>_<n>core and <int8 format>_vs_<its float format>_<shape>_<n>core.

Each line gives the wall-clock median and the median CPU time of the process (time.process_time, all its threads),
with the steps in CPU-ms: on shared cores the CPU time is the steadier figure (waiting for a core is not counted).

Ratios (higher is better): budget_100ms_<fmt>_1core_tta_off = 100 ms / the wall median (budget_100ms_cpu_...: / the
CPU median); rss_budget_150mb_<fmt> = 150 MB / the peak; <fmt>_vs_tflite_1core_tta_off = the float32 LiteRT chain's
CPU median / this artefact's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JSRT = REPO.parent / "shared" / "datasets" / "jsrt-scr-fold1"
STEPS = ("decode", "prepare", "first_stage", "crops", "refine_stage", "unletterbox", "postprocess", "write")


def child(args) -> None:
    """In the pinned subprocess: load the artefact with the edge runner alone, time the path, print one JSON line."""
    sys.path.insert(0, str(REPO))
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:args.child_cores])
    from keras_unet.imaging import postprocess
    from keras_unet.infer import edge, predictor
    from keras_unet.io import images

    clock = {step: 0.0 for step in STEPS}  # wall seconds of each step in one run
    cpu = {step: 0.0 for step in STEPS}  # this process's CPU seconds (all its threads) of each step

    def timed(step, fn):
        def wrapper(*a, **k):
            start, used = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                clock[step] += time.perf_counter() - start
                cpu[step] += time.process_time() - used
        return wrapper

    segmenter = edge.EdgeSegmenter(args.child, num_threads=args.child_cores)
    chain = segmenter.predictor
    chain.network = timed("first_stage", chain.network)
    if segmenter.refined:
        chain.fine.network = timed("refine_stage", chain.fine.network)
        predictor.RefinedPredictor.structure_crops = timed("crops", predictor.RefinedPredictor.structure_crops)
    predictor.prepare = timed("prepare", predictor.prepare)
    predictor.unletterbox = timed("unletterbox", predictor.unletterbox)
    predictor.clean_masks = timed("postprocess", postprocess.clean_masks)
    settings = dataclasses.replace(segmenter.config.postprocess, tta=bool(args.tta))  # on even where the run is off
    out = Path(args.out)

    read = timed("decode", images.read_image)
    write = timed("write", edge.write_masks)

    def once() -> dict:
        for step in clock:
            clock[step] = cpu[step] = 0.0
        start, used = time.perf_counter(), time.process_time()
        masks = segmenter.segment(read(args.image), settings)[1]
        write(out, "image", segmenter.classes, masks)
        return {"total": time.perf_counter() - start, "cpu_total": time.process_time() - used, **clock,
                **{f"cpu_{step}": seconds for step, seconds in cpu.items()}}

    for _ in range(3):
        once()
    runs = [once() for _ in range(args.reps)]
    result = {key: statistics.median(r[key] for r in runs) * 1000.0 for key in runs[0]}
    result["min_total"] = min(r["total"] for r in runs) * 1000.0
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    result["tensorflow_loaded"] = "tensorflow" in sys.modules
    result["refined"] = segmenter.refined
    print(json.dumps(result), flush=True)


NETWORK_SHAPES = {"first_256": (256, 2, 16), "refine_192": (192, 1, 16), "default_512": (512, 3, 12)}  # px, out, base
NETWORK_FORMATS = ("keras", "tflite", "tflite_fp16", "tflite_int8", "tflite_int8_mixed", "tflite_dynamic", "onnx",
                   "onnx_int8")


def network_child(args) -> None:
    """In the pinned subprocess: one network call per repetition (batch 1), CPU and wall medians as one JSON line."""
    sys.path.insert(0, str(REPO))
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:args.child_cores])
    import numpy as np

    path = Path(args.network_child)
    size = int(path.parent.name.split("_")[-1])
    if path.suffix == ".keras":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.child_cores)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

        from keras_unet.infer.runtimes import keras_network
        run = keras_network(keras.saving.load_model(path, compile=False))
    else:
        from keras_unet.infer.load import network
        run = network(path, args.child_cores)
    x = np.random.default_rng(0).random((1, size, size, 1), dtype=np.float32)
    for _ in range(3):
        run(x)
    wall, cpu = [], []
    for _ in range(args.reps):
        start, used = time.perf_counter(), time.process_time()
        run(x)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - used)
    print(json.dumps({"wall_ms": statistics.median(wall) * 1000, "cpu_ms": statistics.median(cpu) * 1000}))


def networks(args, report) -> None:
    """Untrained U-Nets of the JSRT recipe's two shapes and the default model at 512 px, in every format, one call
    each on the pinned cores: what each runtime's kernels cost on this CPU (weights do not change the time; int8
    calibrated on random inputs, so no parity here)."""
    sys.path.insert(0, str(REPO))
    import keras
    import numpy as np

    from keras_unet.export.convert import FILES, convert_tflite, quantize_onnx, write_onnx, write_saved_model
    from keras_unet.model.unet import build_unet

    with tempfile.TemporaryDirectory(prefix="bench_edge_networks_") as folder:
        for name, (size, outputs, base) in NETWORK_SHAPES.items():
            where = Path(folder) / f"{name}_{size}"
            where.mkdir()
            keras.utils.set_random_seed(0)
            model = build_unet(outputs, depth=4, base_filters=base)
            model.save(where / "model.keras")
            write_saved_model(model, where / "saved_model", size)
            rng = np.random.default_rng(0)
            calibration = lambda: ([rng.random((1, size, size, 1), dtype=np.float32)] for _ in range(8))  # noqa
            for fmt in NETWORK_FORMATS:
                if fmt.startswith("tflite"):
                    (where / FILES[fmt]).write_bytes(convert_tflite(where / "saved_model", fmt, calibration))
            write_onnx(model, where / FILES["onnx"], size)
            quantize_onnx(where / FILES["onnx"], where / FILES["onnx_int8"], calibration)
            for n in [int(c) for c in args.cores.split(",")]:
                times = {}
                for fmt in NETWORK_FORMATS:
                    file = where / ("model.keras" if fmt == "keras" else FILES[fmt])
                    command = [sys.executable, __file__, "--network-child", str(file), "--child-cores", str(n),
                               "--reps", str(args.reps)]
                    out = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                    if out.returncode != 0:
                        raise SystemExit(f"{file}: {out.stderr[-1500:]}")
                    times[fmt] = json.loads(out.stdout.strip().splitlines()[-1])
                    report.line(f"network {name} ({size} px, base {base}) {fmt:16s} {n} core{'s' if n > 1 else ' '}: "
                                f"{times[fmt]['cpu_ms']:7.1f} CPU-ms, {times[fmt]['wall_ms']:7.1f} ms wall (medians)")
                int8 = min((f for f in times if "int8" in f), key=lambda f: times[f]["cpu_ms"])
                report.line(f"fastest int8 {name} {n} core(s): {int8}")
                report.ratio(f"fastest_int8_vs_keras_{name}_{n}core", times["keras"]["cpu_ms"] / times[int8]["cpu_ms"])
                for fmt in ("tflite_int8", "onnx_int8"):
                    float_fmt = fmt.split("_")[0]
                    report.ratio(f"{fmt}_vs_{float_fmt}_{name}_{n}core",
                                 times[float_fmt]["cpu_ms"] / times[fmt]["cpu_ms"])


def pick_image(folder: Path) -> Path:
    """The JSRT image to time, or a 1024 px phantom written into folder."""
    if JSRT.is_dir():
        found = sorted(JSRT.glob("*.png"))
        if found:
            return found[0]
    sys.path.insert(0, str(REPO))
    import numpy as np

    from keras_unet.data.phantom import make_phantom
    from keras_unet.io.images import write_png

    path = folder / "phantom_1024.png"
    write_png(path, make_phantom(np.random.default_rng(0), 1024)[0])
    return path


def artefacts(export: Path, formats) -> dict:
    """{format: file} of the export's LiteRT and ONNX artefacts (the metadata's order), those named by formats."""
    metadata = json.loads((export / "metadata.json").read_text())
    return {fmt: export / a["file"] for fmt, a in metadata["artifacts"].items()
            if a["file"].endswith((".tflite", ".onnx")) and (not formats or fmt in formats)}


def run_child(path: Path, cores: int, tta: bool, image: Path, reps: int, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", str(path), "--child-cores", str(cores), "--tta", str(int(tta)),
               "--image", str(image), "--reps", str(reps), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        raise SystemExit(f"{path.name}: the edge subprocess failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", help="an export folder written by export.py")
    p.add_argument("--image", help="the radiograph to time (default: a JSRT image, else a 1024 px phantom)")
    p.add_argument("--reps", type=int, default=20, help="timed runs per configuration, after 3 warm-up runs")
    p.add_argument("--formats", default="", help="comma-separated subset of the artefacts (default: every .tflite "
                                                 "and .onnx one)")
    p.add_argument("--cores", default="1,2", help="core counts to pin to (default 1,2)")
    p.add_argument("--networks", action="store_true", help="instead: time one call of untrained U-Nets of the "
                                                            "recipe's shapes in every format (no export needed)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--network-child", help=argparse.SUPPRESS)
    p.add_argument("--child-cores", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--tta", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.child and not args.network_child and not args.networks and not args.export:
        p.error("give --export EXPORT_DIR (python export.py --model RUN --out EXPORT_DIR)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    if args.network_child:
        return network_child(args)
    sys.path.insert(0, str(Path(__file__).parent))
    from common import Report

    if args.networks:
        report = Report(f"edge networks: one call, batch 1, cores {args.cores}")
        networks(args, report)
        return report.finish()

    export = Path(args.export)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    found = artefacts(export, formats)
    cores = [int(c) for c in args.cores.split(",") if c.strip()]
    available = len(os.sched_getaffinity(0))
    report = Report(f"edge: {export}, {', '.join(found)}; cores {cores} of the {available} this process may use")
    with tempfile.TemporaryDirectory(prefix="bench_edge_") as folder:
        image = pick_image(Path(folder)) if not args.image else Path(args.image)
        import cv2

        shape = cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape
        report.line(f"image: {image} ({shape[1]} x {shape[0]} px, {image.stat().st_size / 1024:.0f} KiB); median of "
                    f"{args.reps} runs after 3 warm-up runs, each in a subprocess pinned to the cores")
        results = {}
        for fmt, path in found.items():
            for n in cores:
                if n > available:
                    continue
                for tta in (False, True):
                    r = run_child(path, n, tta, image, args.reps, Path(folder) / "masks")
                    results[(fmt, n, tta)] = r
                    steps = ", ".join(f"{s} {r['cpu_' + s]:.1f}" for s in STEPS if r[s] > 0.0)
                    report.line(f"{fmt:16s} {n} core{'s' if n > 1 else ' '} TTA {'on ' if tta else 'off'}: "
                                f"{r['total']:7.1f} ms wall median (min {r['min_total']:.1f}), {r['cpu_total']:6.1f} "
                                f"CPU-ms [{steps}] CPU-ms; {'both stages' if r['refined'] else 'first stage only'}; "
                                f"peak RSS {r['rss_mb']:.0f} MB" + ("; TensorFlow LOADED" if r["tensorflow_loaded"]
                                                                    else ""))
    for fmt in found:
        key = (fmt, 1, False)
        if key in results:
            report.ratio(f"budget_100ms_{fmt}_1core_tta_off", 100.0 / results[key]["total"])
            report.ratio(f"budget_100ms_cpu_{fmt}_1core_tta_off", 100.0 / results[key]["cpu_total"])
            report.ratio(f"rss_budget_150mb_{fmt}", 150.0 / max(r["rss_mb"] for k, r in results.items() if k[0] == fmt))
            if ("tflite", 1, False) in results and fmt != "tflite":
                report.ratio(f"{fmt}_vs_tflite_1core_tta_off",
                             results[("tflite", 1, False)]["cpu_total"] / results[key]["cpu_total"])
    report.finish()


if __name__ == "__main__":
    main()
