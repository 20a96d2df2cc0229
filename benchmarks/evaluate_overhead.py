"""Per-call cost of ``liquidjax.train.evaluate`` on a small validation split (13 series, an
ensemble of 5 stem + CfC-64 models): the output shape cached per model structure (now) against
traced on every call (before; the trainer validates after every epoch).

    python benchmarks/evaluate_overhead.py
"""

import statistics
import time

import equinox as eqx
import jax
import numpy as np

import liquidjax.train._evaluate as E
from liquidjax.models import ModelConfig, build_model
from liquidjax.train import ArrayData, evaluate


def main() -> None:
    cfg = ModelConfig(input_size=3, num_classes=2, units=64, mixed_memory=True,
                      stem_channels=(32, 64, 32), ensemble=5)
    model = build_model(cfg, key=jax.random.key(0))
    data = ArrayData(np.random.default_rng(0).normal(size=(13, 24, 3)).astype(np.float32),
                     np.arange(13) % 2)
    evaluate(model, data, batch_size=26)  # compile

    def timed() -> float:
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            evaluate(model, data, batch_size=26)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    cached = timed()
    E._output_shape = lambda m, b: tuple(eqx.filter_eval_shape(E._forward, m, b, None).shape)
    traced = timed()
    print(f"evaluate per call, median of 10: traced every call {traced * 1e3:.0f} ms, "
          f"cached {cached * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
