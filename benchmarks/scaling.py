"""How liquidjax's cost grows: sequence length, units, batch; memory with each adjoint; compile
time vs sequence length.

Sweeps (LTC fully connected, 6 unfolds, 3 inputs, a 10-class readout on the last output,
cross-entropy; "train" = value-and-grad + Adam update in one ``eqx.filter_jit``):

* sequence length 128 → 4096 (batch 8, 32 units), LTC and CfC (64 units, backbone 128):
  forward ms, train ms, ms per step, compile time of the train step;
* units 16 → 256 (batch 16, length 128): forward and train ms;
* batch 1 → 256 (length 128, 32 units): forward and train ms, examples/s.

Memory of one LTC train step at length 128 and 1024 (batch 32, 32 units):

* ``held`` — the default path (``lax.scan`` over observations, fused kernel with its hand-written
  VJP that recomputes synapse activations);
* ``continuous+checkpoint`` — one ``diffeqsolve`` over the whole interpolated input path
  (``interpolation="linear"``) with the fused solver and diffrax's default
  ``RecursiveCheckpointAdjoint``;
* ``held, Tsit5 ×6`` with diffrax's ``RecursiveCheckpointAdjoint`` and with
  ``diffrax.BacksolveAdjoint`` (one ``diffeqsolve`` per observation inside the scan; Tsit5 because
  the fused solver needs the conductance split, which the adjoint term does not have).
  (``BacksolveAdjoint`` in continuous mode with constant steps fails: the ``StepTo`` grid that
  liquidjax builds is reused for the backward solve, which runs t1 → t0.)

Peak memory is reported two ways: **XLA's compiled memory analysis** of the train step
(``jit(f).lower(...).compile().memory_analysis()``: arguments + outputs + temporaries − aliased;
the temporaries hold the residuals kept for the backward pass) — exact for what the executable
allocates — and **process RSS** sampled every millisecond while the compiled step runs, minus the
RSS just before (noisier: the allocator may reuse memory freed earlier).

    python benchmarks/scaling.py [--quick] [--threads N] [--part length,units,batch,memory]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

PARTS = ("length", "units", "batch", "memory")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sweeps, fewer repeats")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--part", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--no-md", action="store_true", help="do not rewrite BENCHMARKS.md")
    return p.parse_args(argv)


class RSSSampler:
    """Max RSS (MiB) of this process while the ``with`` block runs, sampled every ~1 ms."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0.0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)
            time.sleep(0.001)

    def __enter__(self):
        self.before = self.proc.memory_info().rss / 2**20
        self.peak = self.before
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def build(kind, inputs, units, *, key, interpolation="hold", solver=None, adjoint=None,
          max_steps=4096, remat=False):
    import equinox as eqx
    import jax

    from liquidjax.cells import LTC
    from liquidjax.cells._cfc import CfC
    from liquidjax.layers import LiquidRNN

    k1, k2 = jax.random.split(key)
    if kind == "ltc":
        cell = LTC(inputs, units, key=k1, solver=solver, adjoint=adjoint, max_steps=max_steps)
    else:
        cell = CfC(inputs, units, backbone_units=128, key=k1)

    class Classifier(eqx.Module):
        rnn: LiquidRNN
        head: eqx.nn.Linear

        def __call__(self, x):
            return self.head(self.rnn(x)[0])

    return Classifier(LiquidRNN(cell, return_sequences=False, interpolation=interpolation,
                                remat=remat),
                      eqx.nn.Linear(cell.output_size, 10, key=k2))


def fns():
    opt, train_step, forward, _ = _common.classifier_fns(1e-3)
    return opt, train_step, forward


def measure(model, batch, length, inputs, *, warmup, repeats, memory=False):
    import equinox as eqx
    import jax
    import numpy as np

    opt, train_step, forward = fns()
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((batch, length, inputs)).astype(np.float32))
    y = jax.device_put(rng.integers(0, 10, batch).astype(np.int32))
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    t0 = time.perf_counter()
    compiled = train_step.lower(model, opt_state, x, y).compile()
    compile_s = time.perf_counter() - t0
    out = {"batch": batch, "length": length, "compile_train_s": compile_s}
    mem = _common.compiled_memory(compiled)
    if mem is not None:
        out["xla_total_mb"], out["xla_temp_mb"] = mem["total_mb"], mem["temp_mb"]
    loss = float(train_step(model, opt_state, x, y)[2])  # correctness: a finite loss
    if not np.isfinite(loss):
        raise SystemExit(f"non-finite loss {loss} (batch {batch}, length {length})")
    out["loss"] = loss
    if memory:
        with RSSSampler() as s:
            jax.block_until_ready(compiled(model, opt_state, x, y))
        out["rss_before_mb"], out["rss_peak_delta_mb"] = s.before, s.peak - s.before
        return out
    st = [model, opt_state]

    def train():
        m, o, loss = train_step(st[0], st[1], x, y)
        jax.block_until_ready(loss)
        st[0], st[1] = m, o

    out["train_ms"] = _common.time_fn(train, warmup=warmup, repeats=repeats)["median_ms"]
    out["forward_ms"] = _common.time_fn(lambda: jax.block_until_ready(forward(model, x)),
                                        warmup=warmup, repeats=repeats)["median_ms"]
    return out


def part_length(quick, warmup, repeats):
    import jax

    lengths = [128, 512, 2048] if quick else [128, 256, 512, 1024, 2048, 4096]
    rows = []
    for kind, units in (("ltc", 32), ("cfc", 64)):
        model = build(kind, 3, units, key=jax.random.key(0))
        for n in lengths:
            r = measure(model, 8, n, 3, warmup=warmup, repeats=repeats)
            r.update(kind=kind, units=units, train_us_per_step=1e3 * r["train_ms"] / n)
            rows.append(r)
            print(f"  length {kind} L={n:5d}: train {r['train_ms']:9.2f} ms "
                  f"({r['train_us_per_step']:.1f} µs/step), forward {r['forward_ms']:8.2f} ms, "
                  f"compile {r['compile_train_s']:.2f} s", flush=True)
    return rows


def part_units(quick, warmup, repeats):
    import jax

    units = [16, 64, 256] if quick else [16, 32, 64, 128, 256]
    rows = []
    for n in units:
        model = build("ltc", 3, n, key=jax.random.key(0))
        r = measure(model, 16, 128, 3, warmup=warmup, repeats=repeats)
        r.update(kind="ltc", units=n)
        rows.append(r)
        print(f"  units ltc N={n:4d}: train {r['train_ms']:9.2f} ms, forward "
              f"{r['forward_ms']:8.2f} ms, compile {r['compile_train_s']:.2f} s", flush=True)
    return rows


def part_batch(quick, warmup, repeats):
    import jax

    batches = [1, 16, 128] if quick else [1, 8, 32, 128, 256]
    rows = []
    model = build("ltc", 3, 32, key=jax.random.key(0))
    for b in batches:
        r = measure(model, b, 128, 3, warmup=warmup, repeats=repeats)
        r.update(kind="ltc", units=32, train_examples_per_s=1e3 * b / r["train_ms"])
        rows.append(r)
        print(f"  batch ltc B={b:4d}: train {r['train_ms']:9.2f} ms "
              f"({r['train_examples_per_s']:.0f} ex/s), forward {r['forward_ms']:8.2f} ms",
              flush=True)
    return rows


def part_memory(quick):
    import diffrax
    import jax

    from liquidjax.solvers import FusedSemiImplicit

    variants = {
        "held, fused kernel (default)": dict(),
        "held, fused kernel, remat=True (checkpointed steps)": dict(remat=True),
        "continuous, fused solver, RecursiveCheckpointAdjoint": dict(
            interpolation="linear", solver=FusedSemiImplicit(),
            adjoint=diffrax.RecursiveCheckpointAdjoint()),
        "held, Tsit5 ×6, RecursiveCheckpointAdjoint": dict(
            solver=diffrax.Tsit5(), adjoint=diffrax.RecursiveCheckpointAdjoint()),
        "held, Tsit5 ×6, BacksolveAdjoint": dict(
            solver=diffrax.Tsit5(), adjoint=diffrax.BacksolveAdjoint(solver=diffrax.Tsit5())),
    }
    rows = []
    for name, kw in variants.items():
        for n in (128, 1024):
            model = build("ltc", 3, 32, key=jax.random.key(0), max_steps=6 * n + 16, **kw)
            try:
                r = measure(model, 32, n, 3, warmup=0, repeats=0, memory=True)
            except Exception as e:  # noqa: BLE001 - report, do not crash the sweep
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                print(f"  memory {name} L={n}: FAILED {msg}", flush=True)
                rows.append({"variant": name, "length": n, "error": msg})
                continue
            r.update(variant=name)
            rows.append(r)
            print(f"  memory {name:62s} L={n:5d}: XLA {r.get('xla_total_mb', float('nan')):8.2f}"
                  f" MiB (temp {r.get('xla_temp_mb', float('nan')):8.2f}), RSS +"
                  f"{r['rss_peak_delta_mb']:7.1f} MiB, compile {r['compile_train_s']:.2f} s",
                  flush=True)
    for name in variants:
        pair = {r["length"]: r for r in rows if r.get("variant") == name and "xla_total_mb" in r}
        if 128 in pair and 1024 in pair:
            ratio = pair[1024]["xla_total_mb"] / pair[128]["xla_total_mb"]
            pair[1024]["xla_ratio_1024_vs_128"] = ratio
            print(f"  {name}: peak(1024) / peak(128) = {ratio:.2f} (target ≤ 4)")
    return rows


def markdown(res, info, threads, cmd):
    f = _common.fmt_ms
    parts = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `{cmd}` on "
             f"{_common.machine_line(info)}; {threads} threads."]
    if "length" in res:
        parts.append("**Sequence length** (batch 8, 3 inputs; LTC-32 6 unfolds / CfC-64 backbone "
                     "128; train = value-and-grad + Adam):\n\n" + _common.md_table(
                         ["model", "length", "train ms", "µs per step", "forward ms",
                          "compile train s"],
                         [[r["kind"].upper(), r["length"], f(r["train_ms"]),
                           f"{r['train_us_per_step']:.1f}", f(r["forward_ms"]),
                           f"{r['compile_train_s']:.2f}"] for r in res["length"]]))
    if "units" in res:
        parts.append("**Units** (LTC, batch 16, length 128):\n\n" + _common.md_table(
            ["units", "train ms", "forward ms", "compile train s"],
            [[r["units"], f(r["train_ms"]), f(r["forward_ms"]), f"{r['compile_train_s']:.2f}"]
             for r in res["units"]]))
    if "batch" in res:
        parts.append("**Batch** (LTC-32, length 128):\n\n" + _common.md_table(
            ["batch", "train ms", "train examples/s", "forward ms"],
            [[r["batch"], f(r["train_ms"]), f"{r['train_examples_per_s']:.0f}",
              f(r["forward_ms"])] for r in res["batch"]]))
    if "memory" in res:
        parts.append(
            "**Peak memory of one LTC train step** (batch 32, 32 units, 3 inputs). XLA = compiled "
            "memory analysis (arguments + outputs + temporaries); RSS = process RSS sampled "
            "during one run of the compiled step, minus RSS before:\n\n" + _common.md_table(
                ["variant", "length", "XLA MiB", "XLA temp MiB", "RSS Δ MiB", "1024/128 (XLA)"],
                [[r["variant"], r["length"],
                  f"{r['xla_total_mb']:.2f}" if "xla_total_mb" in r else "–",
                  f"{r['xla_temp_mb']:.2f}" if "xla_temp_mb" in r else "–",
                  f"{r['rss_peak_delta_mb']:.1f}" if "rss_peak_delta_mb" in r
                  else r.get("error", "–"),
                  f"{r['xla_ratio_1024_vs_128']:.2f}" if "xla_ratio_1024_vs_128" in r else ""]
                 for r in res["memory"]]))
    return "\n\n".join(parts)


def main(argv=None):
    args = parse_args(argv)
    threads = _common.pin_threads(args.threads)
    import jax

    parts = [p.strip() for p in args.part.split(",") if p.strip()]
    bad = set(parts) - set(PARTS)
    if bad:
        raise SystemExit(f"unknown --part {sorted(bad)}; expected some of {PARTS}")
    info = _common.machine_info()
    warmup, repeats = (1, 3) if args.quick else (2, 7)
    print(f"machine: {_common.machine_line(info)}; threads {threads}; device {jax.devices()[0]}")
    res = {}
    if "length" in parts:
        res["length"] = part_length(args.quick, warmup, repeats)
    if "units" in parts:
        res["units"] = part_units(args.quick, warmup, repeats)
    if "batch" in parts:
        res["batch"] = part_batch(args.quick, warmup, repeats)
    if "memory" in parts:
        res["memory"] = part_memory(args.quick)
    suffix = "_quick" if args.quick else ""
    path = _common.write_json(f"scaling{suffix}.json", {"machine": info, "threads": threads,
                                                        "results": res})
    md = markdown(res, info, threads, _common.command_line())
    print("\n" + md + f"\n\nwrote {path}")
    if not args.quick and not args.no_md and set(parts) == set(PARTS):
        _common.update_benchmarks_md("scaling", md)


if __name__ == "__main__":
    main()
