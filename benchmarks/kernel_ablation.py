"""Before/after of the LTC fast path, side by side in one run (row-wise image configuration).

Variants (same cell, same weights, same batch; the loss values are checked equal first):

* ``diffrax``  — the general path: ``diffeqsolve`` with the fused semi-implicit solver, autodiff
  through diffrax's checkpointed adjoint (what a faithful port does);
* ``kernel``   — the fused kernel with the hand-written VJP (the default fast path);
* ``kernel x{n} devices`` — the same, batch sharded over one XLA CPU device per core (XLA:CPU runs
  each kernel on a single thread; ``liquidjax.use_cpu_cores`` / the CLI default). Run in a child
  process because the device count is fixed when JAX starts.

    python benchmarks/kernel_ablation.py [--repeats 5] [--batch 128]

Prints median wall time and CPU time per train step (loss + grads + Adam) and per forward.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(variant: str, batch: int, repeats: int) -> dict:
    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import liquidjax as lj

    steps, inputs, units = 32, 96, 64
    cell = lj.LTC(inputs, units, key=jax.random.key(0))
    if variant == "diffrax":
        # Same fused solver through diffeqsolve (StepTo keeps it off the fast path).
        cell = cell.with_solver(stepsize_controller=diffrax.StepTo(jnp.linspace(0.0, 1.0, 7)))
        assert not cell.uses_fused_kernel
    model = (lj.LiquidRNN(cell, return_sequences=False),
             eqx.nn.Linear(units, 10, key=jax.random.key(1)))
    x = jax.random.normal(jax.random.key(2), (batch, steps, inputs))
    y = jax.random.randint(jax.random.key(3), (batch,), 0, 10)
    n_dev = len(jax.devices())
    if n_dev > 1:
        from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

        mesh = jax.make_mesh((n_dev,), ("batch",), (AxisType.Auto,))
        x = jax.device_put(x, NamedSharding(mesh, P("batch")))
        y = jax.device_put(y, NamedSharding(mesh, P("batch")))
        model = jax.device_put(model, NamedSharding(mesh, P()))

    def loss(m, x, y):
        rnn, lin = m
        h = jax.vmap(lambda s: rnn(s)[0])(x)
        return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(lin)(h), y).mean()

    opt = optax.adam(1e-3)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(m, s, x, y):
        value, g = eqx.filter_value_and_grad(loss)(m, x, y)
        u, s = opt.update(g, s, eqx.filter(m, eqx.is_inexact_array))
        return eqx.apply_updates(m, u), s, value

    forward = eqx.filter_jit(loss)
    out = {"variant": variant, "devices": n_dev}
    t = time.perf_counter()
    out["loss"] = float(jax.block_until_ready(train_step(model, state, x, y))[2])
    out["compile_train_s"] = time.perf_counter() - t
    jax.block_until_ready(forward(model, x, y))
    for name, fn, args in (("train", train_step, (model, state, x, y)),
                           ("forward", forward, (model, x, y))):
        walls, cpus = [], []
        for _ in range(repeats):
            c, w = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn(*args))
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
        out[f"{name}_ms"] = 1e3 * float(np.median(walls))
        out[f"{name}_cpu_ms"] = 1e3 * float(np.median(cpus))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.repeats)))
        return 0
    cores = len(os.sched_getaffinity(0))
    runs = [("diffrax", 1), ("kernel", 1), ("kernel", cores)]
    results = []
    for variant, n in runs:
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        cmd = [sys.executable, __file__, "--child", variant, "--repeats", str(args.repeats),
               "--batch", str(args.batch)]
        line = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(line.strip().splitlines()[-1]))
        print(f"  done {variant} x{n}", flush=True)
    base = results[0]
    losses = {r["loss"] for r in results}
    if max(losses) - min(losses) > 1e-4:
        print(f"loss mismatch between variants: {results}", file=sys.stderr)
        return 1
    print(f"\nLTC-64 row-wise, batch {args.batch}, 32 steps x 96 inputs, 6 unfolds; "
          f"loss {base['loss']:.6f} in every variant; median of {args.repeats}")
    print("| variant | devices | train ms (cpu ms) | forward ms (cpu ms) | train speed-up "
          "| compile s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['variant']} | {r['devices']} | {r['train_ms']:.0f} "
              f"({r['train_cpu_ms']:.0f}) | "
              f"{r['forward_ms']:.0f} ({r['forward_cpu_ms']:.0f}) | "
              f"{base['train_ms'] / r['train_ms']:.2f}x | {r['compile_train_s']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
