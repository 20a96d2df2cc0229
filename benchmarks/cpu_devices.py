"""How liquidjax's compiled CPU kernels meet the machine: threads after a pause, and devices.

Two measurements behind ``docs/solvers.md`` ("Threads", "One device") and BENCHMARKS.md (issue
10, fourth round), each in fresh processes, the compiled kernels on and off
(``LIQUIDJAX_NATIVE``):

* **gaps**: the row-wise CfC-64 forward (B128 × 32 steps × 96 inputs, backbone 128) timed back to
  back, right after 5 ms of sleep, and right after a 400×400 NumPy product. A kernel whose second
  worker has slept is slow after a pause unless that worker is woken on another CPU.
* **devices**: the train step (value-and-grad + Adam of a 10-class head) of the row-wise CfC-64
  and LTC-64 over 1 and 2 XLA CPU devices (``--xla_force_host_platform_device_count``, the batch
  sharded as ``liquidjax train`` shards it: ``DataParallel``, its step traced inside
  ``DataParallel.context()``, so that each device runs the kernels on its own rows).

    python benchmarks/cpu_devices.py            # both, ≈ 1 min
    python benchmarks/cpu_devices.py --part gaps

Prints Markdown tables (ms, medians of 40 calls). Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = {"cfc": "CfC", "ltc": "LTC"}

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {here!r})
import _common
import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax
from liquidjax.train import DataParallel
from liquidjax.cells import CfC, LTC
from liquidjax.layers import LiquidRNN

part, cell_name = {part!r}, {cell!r}
B, T, I, H = 128, 32, 96, 64
key = jax.random.key(0)
cell = (CfC(I, H, backbone_units=128, key=key) if cell_name == "cfc" else LTC(I, H, key=key))
model = (LiquidRNN(cell, return_sequences=False), eqx.nn.Linear(H, 10, key=jax.random.key(1)))
x = jax.random.normal(jax.random.key(2), (B, T, I))
y = jax.random.randint(jax.random.key(3), (B,), 0, 10)

def logits(m, x):
    rnn, head = m
    return jax.vmap(lambda xi: head(rnn(xi)[0]))(x)

def timed(fn, before=lambda: None, n=40):
    fn()
    out = []
    for _ in range(n):
        before()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(out))

if part == "gaps":
    f = eqx.filter_jit(logits)
    run = lambda: jax.block_until_ready(f(model, x))
    a = np.random.rand(400, 400)
    res = dict(back_to_back=timed(run), after_sleep=timed(run, lambda: time.sleep(0.005)),
               after_numpy=timed(run, lambda: a @ a))
else:
    dp = DataParallel.create()
    xs, ys = (jax.device_put(a, dp.batch_sharding) for a in (x, y))
    model = dp.replicate(model)
    opt = optax.adam(1e-3)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(m, s, x, y):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(logits(m, x), y).mean()
        l, g = eqx.filter_value_and_grad(loss)(m)
        u, s = opt.update(g, s)
        return eqx.apply_updates(m, u), s, l

    with dp.context():
        res = dict(train=timed(lambda: jax.block_until_ready(step(model, state, xs, ys)), n=20))
print("RESULT", json.dumps(res))
"""


def child(part: str, cell: str, native: bool, devices: int) -> dict:
    env = dict(os.environ, LIQUIDJAX_NATIVE="1" if native else "0",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    code = CHILD.format(here=str(HERE), part=part, cell=cell)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        sys.exit(f"cpu_devices.py: the {part}/{cell} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[0][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("gaps", "devices", "all"), default="all")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    import _common

    print(f"machine: {_common.machine_line(_common.machine_info())}")
    if args.part in ("gaps", "all"):
        rows = []
        for native in (True, False):
            r = child("gaps", "cfc", native, 1)
            rows.append(["compiled kernel" if native else "pure JAX (LIQUIDJAX_NATIVE=0)",
                         *(f"{r[k]:.2f}" for k in ("back_to_back", "after_sleep", "after_numpy"))])
        print("\nRow-wise CfC-64 forward, ms (median of 40), one device:\n")
        print(_common.md_table(["path", "back to back", "after 5 ms sleep", "after NumPy"],
                               rows))
    if args.part in ("devices", "all"):
        rows = []
        for cell in ("cfc", "ltc"):
            for native in (True, False):
                ms = [child("devices", cell, native, n)["train"] for n in (1, 2)]
                rows.append([f"{NAMES[cell]}-64", "compiled kernel" if native else "pure JAX",
                             f"{ms[0]:.1f}", f"{ms[1]:.1f}"])
        print("\nRow-wise train step, ms (median of 20), batch sharded over the devices:\n")
        print(_common.md_table(["cell", "path", "1 CPU device", "2 CPU devices"], rows))


if __name__ == "__main__":
    main()
