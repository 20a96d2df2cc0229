"""Liquid-S4 streaming: one observation through a trained Liquid-S4 classifier, batch 1.

Builds the model of the ``liquid_s4_pixels`` recipe (or a smaller one with ``--units/--layers``)
for one-channel pixel sequences, trains it for a few Adam steps on random data (so that the
weights are not those of the initialisation; the latency does not depend on them), and

* checks that streaming a 784-step sequence through ``liquidjax.export.stepper`` (XLA and, when
  a C compiler is there, the C backend) gives at every step what the model computes in
  **convolution mode** (FFT) on the prefix — the classifier's mean readout, read at each step —
  for both kinds of stepper: ``dt`` given at every step (irregular sampling: the layer
  discretises ``A`` at every step) and ``stepper(model, dt=1.0)`` (a fixed-rate stream: the
  discretisation folded in once, when the stepper is built);
* times one step of each (median over interleaved blocks, after a warm-up) and prints µs/step
  beside the targets of issue 23 (≤ 50 µs XLA, ≤ 10 µs C).

    python benchmarks/liquid_s4_stream.py
    python benchmarks/liquid_s4_stream.py --units 64 --layers 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=None, help="width (default: the recipe's)")
    ap.add_argument("--layers", type=int, default=None, help="blocks (default: the recipe's)")
    ap.add_argument("--steps", type=int, default=784, help="sequence length checked")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = _common.pin_threads(args.threads)

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from liquidjax import export
    from liquidjax.models import ModelConfig, build_model
    from liquidjax.recipes import RECIPES

    fields = {k: v for k, v in RECIPES["liquid_s4_pixels"].settings.items()
              if k in {f for f in ModelConfig.__dataclass_fields__}}
    if args.units:
        fields["units"] = args.units
    if args.layers:
        fields["layers"] = args.layers
    config = ModelConfig(input_size=1, num_classes=10, **fields)
    model = build_model(config, key=jax.random.key(0))
    nparams = sum(a.size for a in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)))

    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.uniform(size=(8, 64, 1)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 10, 8))
    opt = optax.adam(1e-3)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(m, s):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(xs), ys).mean()
        g = eqx.filter_grad(loss)(m)
        u, s = opt.update(g, s, eqx.filter(m, eqx.is_inexact_array))
        return eqx.apply_updates(m, u), s

    for _ in range(5):
        model, state = train_step(model, state)

    seq = rng.uniform(size=(args.steps, 1)).astype(np.float32)
    # convolution mode on every prefix is O(T² log T); read the mean readout of the per-step
    # outputs instead: the classifier's "mean" readout at step t is the running mean.
    rnn = model.layers[0]
    outs, _ = jax.jit(lambda x: rnn(x))(jnp.asarray(seq))
    running = np.cumsum(np.asarray(outs, np.float64), 0) / np.arange(1, args.steps + 1)[:, None]
    expected = np.asarray(jax.vmap(model.head)(jnp.asarray(running, jnp.float32)))
    steppers = {"xla": export.stepper(model), "xla fixed dt": export.stepper(model, dt=1.0)}
    try:
        steppers["c"] = export.stepper(model, backend="c")
        steppers["c fixed dt"] = export.stepper(model, backend="c", dt=1.0)
    except RuntimeError as e:
        print(f"no C backend: {e}")
    errors = {}
    for name, step in steppers.items():
        s, got = step.initial_state(), []
        for x in seq:
            y, s = step(s, x, np.float32(1.0))
            got.append(np.asarray(y))
        errors[name] = float(np.max(np.abs(np.stack(got) - expected)))
    whole = np.asarray(model(jnp.asarray(seq)))
    errors["last step vs model(x)"] = float(np.max(np.abs(whole - expected[-1])))

    fns = {}
    for name, step in steppers.items():
        cell = [step.initial_state()]
        x0 = seq[0]

        def call(step=step, cell=cell):
            y, cell[0] = step(cell[0], x0, np.float32(1.0))
            jax.block_until_ready(y)

        fns[name] = call
    t0 = time.perf_counter()
    timing = _common.time_interleaved(fns, warmup=max(50, args.calls // 20),
                                      repeats={k: args.calls for k in fns}, block=100)
    us = {k: v["median_ms"] * 1e3 for k, v in timing.items()}
    print(f"machine: {_common.machine_line(_common.machine_info())}; threads {threads}")
    print(f"model: Liquid-S4 width {config.units}, {config.layers} blocks, SSM {config.ssm_size}, "
          f"liquid order {config.liquid_order} ({config.liquid_kernel}), {nparams} parameters; "
          f"batch 1, {args.calls} calls ({time.perf_counter() - t0:.1f} s)")
    print("max |stepper − convolution mode| over "
          f"{args.steps} steps: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    targets = {"xla": 50.0, "c": 10.0}
    for k, v in us.items():
        target = targets[k.split()[0]]
        print(f"{k:12s} {v:8.2f} µs/step  (target ≤ {target:g} µs: "
              f"{'met' if v <= target else 'NOT met'})")


if __name__ == "__main__":
    main()
