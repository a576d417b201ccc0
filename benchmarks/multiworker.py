"""Training images/s of two worker processes (TF_CONFIG, train.distributed) against one, on this machine.

Three ways of training the same run, each a real `train.py` on the bundled sample, one after the other, the order
rotating every round:

- `fit`: one process, no TF_CONFIG: Keras's model.fit (the default path);
- `loop_1w`: one process as a one-worker TF_CONFIG cluster: the distributed epoch loop with nobody to talk to
  (what the loop and MultiWorkerMirroredStrategy cost by themselves);
- `two_workers`: two processes on localhost, each with half the global batch.

A run's figure is its steady state: training images x epochs after the first (which also traces) over the time
between the first and the last epoch line on stdout (validation included, the same in all three). On a machine
whose cores the two workers share, two workers cannot beat one: each computes half the batch on the same cores,
then the gradients (every weight, each step) go through gRPC on localhost; the ratios say how much that costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cores

TRAIN_IMAGES = 32  # the bundled sample: 40 images, 8 held back for validation


def free_ports(count: int) -> list[int]:
    """count TCP ports free on localhost now."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(out: Path, args: list[str], tf_config: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen([sys.executable, "train.py", *args, "--out", str(out)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def epoch_times(proc: subprocess.Popen) -> tuple[list[float], str]:
    """The monotonic times of the process's epoch lines, and its whole output."""
    times, lines = [], []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch "):
            times.append(time.monotonic())
    proc.wait()
    return times, "".join(lines)


def run(kind: str, args: list[str], folder: Path) -> float:
    """Steady-state training images/s of one run of kind."""
    out = folder / kind
    shutil.rmtree(out, ignore_errors=True)
    if kind == "fit":
        procs = [launch(out, args, None)]
    else:
        workers = [f"localhost:{p}" for p in free_ports(1 if kind == "loop_1w" else 2)]
        procs = [launch(out, args, json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}))
                 for i in range(len(workers))]
    results = [epoch_times(p) for p in procs]  # the chief's stdout first; the others' pipes are small enough
    for proc, (_, text) in zip(procs, results):
        if proc.returncode != 0:
            raise SystemExit(f"{kind}: train.py exited {proc.returncode}:\n{text[-3000:]}")
    times = results[0][0]
    return TRAIN_IMAGES * (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--base-filters", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="one round of 4 epochs")
    a = p.parse_args()
    rounds, epochs = (1, 4) if a.quick else (a.rounds, a.epochs)
    args = ["--epochs", str(epochs), "--image-size", str(a.image_size), "--batch-size", str(a.batch_size),
            "--base-filters", str(a.base_filters), "--early-stopping", "0", "--no-augment"]
    kinds = ["fit", "loop_1w", "two_workers"]
    figures = {k: [] for k in kinds}
    print(f"{cores()} cores; {TRAIN_IMAGES} training images, {a.image_size} px, global batch {a.batch_size}, "
          f"base {a.base_filters}, {epochs} epochs a run, {rounds} round(s)")
    with tempfile.TemporaryDirectory(prefix="keras_unet_multiworker_") as folder:
        for r in range(rounds):
            for kind in kinds[r % 3:] + kinds[:r % 3]:
                figures[kind].append(run(kind, args, Path(folder)))
                print(f"round {r + 1} {kind}: {figures[kind][-1]:.2f} images/s", flush=True)
    best = {k: max(v) for k, v in figures.items()}
    for kind in kinds:
        print(f"{kind}: {best[kind]:.2f} images/s (best of {len(figures[kind])})")
    print(f"ratio two_workers_vs_fit {best['two_workers'] / best['fit']:.3f}")
    print(f"ratio two_workers_vs_loop_1w {best['two_workers'] / best['loop_1w']:.3f}")
    print(f"ratio loop_1w_vs_fit {best['loop_1w'] / best['fit']:.3f}")


if __name__ == "__main__":
    main()
