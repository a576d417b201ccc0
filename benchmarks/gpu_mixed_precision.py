"""GPU check: the project's U-Net and loss train in float32 and mixed_float16; prints images/s and the ratio.

Runs on any Keras 3 backend (model.py and losses.py are pure keras.ops); on the device machine, which has
JAX but no TensorFlow: KERAS_BACKEND=jax python benchmarks/gpu_mixed_precision.py
"""

import argparse
import time

import keras
import numpy as np

from keras_unet.model.losses import BceDiceLoss
from keras_unet.model.unet import build_unet


def synthetic_batch(rng, batch, size, classes):
    """Images with bright discs and the discs as masks."""
    yy, xx = np.mgrid[0:size, 0:size]
    x = rng.normal(0.3, 0.05, (batch, size, size, 1)).astype("float32")
    y = np.zeros((batch, size, size, classes), "float32")
    for b in range(batch):
        for c in range(classes):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            r = size * rng.uniform(0.05, 0.15)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
            y[b, ..., c] = disc
            x[b, ..., 0] += 0.4 * disc
    return x, y


def measure(policy, x, y, base, steps):
    """Images per second of train_on_batch under a dtype policy, and the first and last loss."""
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = build_unet(y.shape[-1], depth=4, base_filters=base)
    model.compile(keras.optimizers.Adam(1e-3), loss=BceDiceLoss(), jit_compile=True)
    first = float(np.asarray(model.train_on_batch(x, y)))
    for _ in range(3):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        last = model.train_on_batch(x, y)
    last = float(np.asarray(last))  # forces completion
    elapsed = time.perf_counter() - start
    out_dtype = str(model.predict(x[:1], verbose=0).dtype)
    keras.config.set_dtype_policy("float32")
    return len(x) * steps / elapsed, first, last, out_dtype


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--base", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    x, y = synthetic_batch(np.random.default_rng(0), args.batch, args.size, 3)
    print(f"backend {keras.backend.backend()}, {args.size} px, batch {args.batch}, base {args.base}")
    results = {}
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        ips, first, last, dtype = measure(policy, x, y, args.base, args.steps)
        results[policy] = ips
        print(f"{policy}: {ips:.1f} images/s, loss {first:.3f} -> {last:.3f}, output dtype {dtype}")
    print(f"ratio mixed_float16_vs_float32 {results['mixed_float16'] / results['float32']:.2f}")
    print(f"ratio mixed_bfloat16_vs_float32 {results['mixed_bfloat16'] / results['float32']:.2f}")


if __name__ == "__main__":
    main()
