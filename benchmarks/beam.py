"""Images per second of `predict.py --runner beam` on the DirectRunner with 2 worker processes against predict.py in
one process, on the same images and model.

Both candidates run as the command a user types (a fresh `python -m keras_unet.cli.main predict ...` process each
time, into an empty output folder), interleaved round-robin. Each run gives three figures, from its wall clock and
the modification times of the overlays it writes (one per image, the last file predict_image writes):
start-up (command start to the first overlay: imports, model loading, for Beam the pipeline and its workers),
the steady rate ((N - 1) / (last overlay - first overlay): images per second once running) and the tail (last
overlay to exit: the CSVs, Beam's shutdown); images/s end to end is N / wall.

    .venv-beam/bin/python benchmarks/beam.py [--quick] [--model PATH] [--images N] [--workers 2]

(apache-beam, the beam extra: requirements-beam.txt). Default model: the v0.1 fixture's TFLite export
(tests/fixtures/v0_1, 64 px network, 3 classes, TTA on), images: data/sample (512 x 512), cycled to N.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, interleave, machine, median, spread

SAMPLE = REPO / "data" / "sample"
DEFAULT_MODEL = REPO / "tests" / "fixtures" / "v0_1" / "export" / "model.tflite"


def write_images(folder: Path, count: int) -> Path:
    """count images copied from data/sample (cycled, renamed so that every stem is new)."""
    sources = sorted(SAMPLE.glob("*.png"))
    folder.mkdir(parents=True)
    for i in range(count):
        shutil.copy(sources[i % len(sources)], folder / f"img_{i:04d}.png")
    return folder


def command(model: Path, images: Path, out: Path, workers: int) -> list[str]:
    """The predict command line: in this process (workers 0) or on Beam's DirectRunner with worker processes."""
    argv = [sys.executable, "-m", "keras_unet.cli.main", "predict", "--model", str(model), "--input", str(images),
            "--out", str(out)]
    if workers:
        argv += ["--runner", "beam", f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    return argv


def runner(argv: list[str], out: Path, env: dict, spans: list):
    """A callable that runs the command into an empty out and returns its (wall, CPU of the process tree) seconds;
    each run appends (start-up, steady seconds between the first and last overlay, tail) to spans."""
    def run():
        shutil.rmtree(out, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start, start_clock = time.perf_counter(), time.time()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        wall, end_clock = time.perf_counter() - start, time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        written = sorted(p.stat().st_mtime for p in (out / "overlays").iterdir())
        spans.append((written[0] - start_clock, written[-1] - written[0], end_clock - written[-1]))
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--images", type=int, help="images per run (default 40; --quick 16)")
    p.add_argument("--workers", type=int, default=2, help="Beam worker processes (default 2)")
    p.add_argument("--reps", type=int, help="timed rounds (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    count = args.images or (16 if args.quick else 40)
    reps = args.reps or (1 if args.quick else 3)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    print(f"machine: {machine()}")
    print(f"model: {args.model}; {count} images of data/sample (512 x 512); {reps} round(s); Beam: DirectRunner, "
          f"{args.workers} worker processes (multi_processing)")
    names = ["predict_py", f"beam_{args.workers}w"]
    spans = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-beam-") as tmp:
        images = write_images(Path(tmp) / "in", count)
        candidates = {name: runner(command(args.model, images, Path(tmp) / name, workers), Path(tmp) / name, env,
                                   spans[name]) for name, workers in zip(names, (0, args.workers))}
        times = interleave(candidates, reps, warmup=0, log=print)
    rates = {}
    for name in names:
        wall = median(times[name])
        start_up, steady, tail = (median([s[i] for s in spans[name]]) for i in range(3))
        rates[name] = (count / wall, (count - 1) / steady)
        print(f"{name}: {count} images in {wall:.1f} s ({spread(times[name])}), cpu {median(times.cpu[name]):.1f} s; "
              f"start-up {start_up:.1f} s, {rates[name][1]:.3f} images/s once running, tail {tail:.1f} s; "
              f"{rates[name][0]:.3f} images/s end to end")
    beam, local = rates[names[1]], rates[names[0]]
    print(f"ratio {names[1]}_vs_predict_py_end_to_end {beam[0] / local[0]:.2f}")
    print(f"ratio {names[1]}_vs_predict_py_steady {beam[1] / local[1]:.2f}")

if __name__ == "__main__":
    main()
