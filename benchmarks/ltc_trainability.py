"""Why the ncps LTC learns slowly on image rows: ablations at a fixed step budget.

Each variant trains for the same number of steps on the same Fashion-MNIST rows (28 steps x 28
standardised features, batch 128, AdamW 5e-3, one-cycle schedule) and is scored on 2 000 held-out
training images. Accuracy at a fixed step budget does not depend on the machine's load, so these
figures can be taken while other work runs (the seconds column cannot).

    python benchmarks/ltc_trainability.py                          # every variant, 300 steps
    python benchmarks/ltc_trainability.py --variants ncps,ncps_mean --steps 100

Variants (names combine): ``ncps`` — ncps's initialisation, readout of the last step;
``scaled`` — synaptic weights U(0.001, 1) / fan-in (total conductance O(1) instead of ~15);
``mu0`` — sensory synapses centred on the standardised inputs (mu ~ U(-0.5, 0.5), sigma ~
U(0.5, 2)); ``gl`` — leak 0.1; ``cm`` / ``cmN`` — capacitance 2 / N; ``mean`` — mean of the
outputs over the sequence instead of the last one; ``mm`` — mixed memory (an LSTM before the
LTC); ``cfc`` — a CfC-64 for reference; ``slow`` — the library's ``LTC(init="slow")``
(= scaled_mu0_gl_cm8). Data: Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import liquidjax as lj
from liquidjax.models import SequenceClassifier
from liquidjax.train import ArrayData, TrainConfig, evaluate, fit

DATA = "/usr/share/datasets/fashion-mnist/"
DEFAULT = ("cfc,ncps,scaled_mu0_gl,scaled_mu0_gl_cm,scaled_mu0_gl_cm8,ncps_mean,"
           "scaled_mu0_gl_cm_mean,ncps_mm,slow,slow_mm")


def _idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(DATA + name) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load(train_examples: int) -> tuple[ArrayData, ArrayData]:
    x = _idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28).astype(np.float32) / 255
    y = _idx("train-labels-idx1-ubyte.gz", 8).astype(np.int32)
    mean, std = x[:50000].mean((0, 1)), x[:50000].std((0, 1)) + 1e-6
    x = (x - mean) / std
    return ArrayData(x[:train_examples], y[:train_examples]), ArrayData(x[50000:52000],
                                                                        y[50000:52000])


def _inv_softplus(y):
    return jnp.log(jnp.expm1(y))


def retention_per_step(cell: lj.LTC, x: jax.Array) -> float:
    """Mean fraction of the state kept across one unit timespan at rest (v = 0) under input x:
    the product over the unfolds of cm_t / (cm_t + den)."""
    _, den, cm = cell.conductances(0.0, jnp.zeros(cell.state_size), x)
    cm_t = cm * cell.ode_unfolds
    return float(jnp.mean((cm_t / (cm_t + den)) ** cell.ode_unfolds))


def variant(name: str, key) -> tuple[SequenceClassifier, float | None]:
    k1, k2 = jax.random.split(key)
    if name == "cfc":
        return SequenceClassifier([lj.LiquidRNN(lj.CfC(28, 64, key=k1))],
                                  eqx.nn.Linear(64, 10, key=k2)), None
    cell = lj.LTC(28, 64, key=k1, init="slow" if name.startswith("slow") else "ncps")
    n, i = cell.state_size, cell.input_size
    if "scaled" in name:
        ku, kv = jax.random.split(k1)
        w = jax.random.uniform(ku, (n, n), minval=0.001, maxval=1.0) / n
        sw = jax.random.uniform(kv, (i, n), minval=0.001, maxval=1.0) / i
        cell = eqx.tree_at(lambda c: (c.w, c.sensory_w), cell,
                           (_inv_softplus(w), _inv_softplus(sw)))
    if "mu0" in name:
        ka, kb = jax.random.split(k2)
        cell = eqx.tree_at(lambda c: (c.sensory_mu, c.sensory_sigma), cell,
                           (jax.random.uniform(ka, (i, n), minval=-0.5, maxval=0.5),
                            jax.random.uniform(kb, (i, n), minval=0.5, maxval=2.0)))
    if "gl" in name:
        cell = eqx.tree_at(lambda c: c.gleak, cell, _inv_softplus(jnp.full((n,), 0.1)))
    if m := re.search(r"cm(\d*)", name):
        cm = float(m.group(1) or 2)
        cell = eqx.tree_at(lambda c: c.cm, cell, _inv_softplus(jnp.full((n,), cm)))
    keep = retention_per_step(cell, jax.random.normal(jax.random.key(9), (i,)))
    body = lj.MixedMemory(cell, key=k2) if "mm" in name else cell
    model = SequenceClassifier([lj.LiquidRNN(body)], eqx.nn.Linear(cell.output_size, 10, key=k2),
                               readout="mean" if "mean" in name else "last")
    return model, keep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=DEFAULT, help=f"comma-separated (default {DEFAULT})")
    ap.add_argument("--steps", type=int, default=300, help="training steps (batch 128)")
    args = ap.parse_args()
    train, val = load(args.steps * 128)
    print("| variant | state kept per timespan at init | val acc | val loss | s |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.variants.split(","):
        model, keep = variant(name, jax.random.key(0))
        t0 = time.time()
        res = fit(model, train, TrainConfig(epochs=1, batch_size=128, learning_rate=5e-3,
                                            log_every=25), progress="none")
        ev = evaluate(res.model, val, batch_size=500)
        kept = "–" if keep is None else f"{keep:.2g}"
        print(f"| {name} | {kept} | {100 * ev['accuracy']:.1f} % | {ev['loss']:.3f} | "
              f"{time.time() - t0:.0f} |", flush=True)
        print(json.dumps({"variant": name, "steps": args.steps, "val_accuracy": ev["accuracy"]}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
