"""Host-side batch assembly speed: one CIFAR-10-shaped training batch (gather, crop + flip,
normalise, rows) from a 50 000-image uint8 array.

    python benchmarks/batch_assembly.py [--batch 128] [--repeats 20]

Checks one un-augmented batch against the images normalised independently (float64) before it
times; prints milliseconds per batch (the training step must not wait on the host: compare with
the step time of the model being trained).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from liquidjax import data as D


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 50000)
    seq = D.ImageSequencer.fit(images[:5000])
    plain = D.Loader((images, labels), args.batch, seed=0, transform=D.ImageTransform(seq))
    x, _ = plain.batch(0, 0).data
    idx = plain.order(0)[0]
    mean = images[:5000].reshape(-1, 3).astype(np.float64).mean(0) / 255
    std = (images[:5000].reshape(-1, 3).astype(np.float64) / 255).std(0)
    want = ((images[idx] / 255.0 - mean) / std).reshape(32, 96)
    np.testing.assert_allclose(x[0], want, rtol=1e-5, atol=1e-5)

    loader = D.Loader((images, labels), args.batch, seed=0,
                      transform=D.ImageTransform(seq, augment=True))
    loader.batch(0, 0)
    start = time.perf_counter()
    for step in range(args.repeats):
        loader.batch(0, step)
    per_batch = (time.perf_counter() - start) / args.repeats
    print(f"batch assembly (batch {args.batch}, crop + flip + normalise + rows): "
          f"{per_batch * 1e3:.1f} ms per batch")


if __name__ == "__main__":
    main()
