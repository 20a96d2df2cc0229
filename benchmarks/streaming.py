"""Streaming latency: one observation through a liquid network, liquidjax vs ncps (PyTorch).

A controller steps its policy one observation at a time (batch 1). For LTC-32 and CfC-32 with 8
inputs this script

1. builds the ncps model (``ncps.torch.LTC`` / ``ncps.torch.CfC``), copies its weights into
   liquidjax with ``liquidjax.from_ncps``, and **checks that streaming a random sequence step by
   step gives the same outputs** through ncps, ``liquidjax.export.stepper`` (XLA, and the C
   backend ``backend="c"``) and the ONNX Runtime session of ``liquidjax.export.to_onnx`` (it
   exits with an error if not);
2. times one step of each — ncps ``model(x, hx, timespans)`` under ``torch.inference_mode``,
   the stepper ``step(state, x, dt)`` (NumPy observation in, blocking on the output), the C
   stepper (the same call; NumPy out), ONNX Runtime ``session.run`` — interleaved round-robin
   in blocks of ``--block`` consecutive calls (so that no call follows another library's:
   torch's OpenMP workers spin after each call and slow down whatever runs next on the same
   cores), median of many calls, same cores and threads for all;
3. prints a table (µs per step, ncps / liquidjax speed-up) and the compute floor (the step
   inside one compiled ``lax.scan`` over 1000 observations, where no call overhead remains).

    python benchmarks/streaming.py                     # 2 threads, 3000 calls each
    python benchmarks/streaming.py --quick             # fewer calls (development)
    python benchmarks/streaming.py --block 1           # strict alternation a, b, c, a, b, c
    python benchmarks/streaming.py --no-c              # without the C backend (no compiler)
    python benchmarks/streaming.py --sync-dispatch     # jax_cpu_enable_async_dispatch=False
                                                       # (the stepper is synchronous anyway)
    python benchmarks/streaming.py --write-md          # also rewrite BENCHMARKS.md's section

Figures are only comparable on a quiet machine (BENCHMARKS.md): stop other jobs first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (must come before jax/torch: pins the threads)

INPUTS, UNITS, SEQ = 8, 32, 50


def build(kind: str, seed: int):
    """The ncps model and its liquidjax twin (same weights)."""
    import torch
    from ncps.torch import LTC as TLTC, CfC as TCfC

    from liquidjax import from_ncps

    torch.manual_seed(seed)
    if kind == "ltc":
        tmodel = TLTC(INPUTS, UNITS, batch_first=True)
        kw = {}
    else:
        tmodel = TCfC(INPUTS, UNITS, batch_first=True, backbone_units=128, backbone_layers=1)
        kw = {"backbone_units": 128, "backbone_layers": 1}
    tmodel.eval()
    sd = {k: v.detach().cpu().numpy().copy() for k, v in tmodel.state_dict().items()}
    return tmodel, from_ncps(sd, kind=kind, input_size=INPUTS, units=UNITS, **kw)


def check(kind, tmodel, step, cstep, sess, xs, dts) -> float:
    """Stream ``xs`` through all of them; return the largest difference to ncps."""
    import numpy as np
    import torch

    h, s, so = None, step.initial_state(), np.asarray(step.initial_state())
    sc = None if cstep is None else cstep.initial_state()
    worst = 0.0
    with torch.inference_mode():
        for x, dt in zip(xs, dts):
            yt, h = tmodel(torch.from_numpy(x[None, None]), h,
                           torch.from_numpy(np.array([[dt]], np.float32)))
            yj, s = step(s, x, dt)
            ref = yt.numpy()[0, 0]
            worst = max(worst, float(np.max(np.abs(np.asarray(yj) - ref))))
            if cstep is not None:
                yc, sc = cstep(sc, x, dt)
                worst = max(worst, float(np.max(np.abs(yc - ref))))
            if sess is not None:
                yo, so = sess.run(None, {"state": so, "x": x, "dt": np.array(dt, np.float32)})
                worst = max(worst, float(np.max(np.abs(yo - ref))))
    if worst > 1e-4:
        raise SystemExit(f"{kind}: streamed outputs differ from ncps by {worst:.2e} (> 1e-4)")
    return worst


def compute_floor_us(step_model, xs, dts) -> float:
    """µs per observation of the same step inside one compiled scan over 1000 observations."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from liquidjax.export import _step

    plan = _step._plan(step_model)
    seq = _step._sequence_fn(plan.fn)
    n = 1000
    xs_long = jnp.asarray(np.resize(xs, (n, INPUTS)))
    dts_long = jnp.asarray(np.resize(dts, (n,)))
    run = jax.jit(seq).lower(jnp.asarray(plan.init), xs_long, dts_long).compile()
    t = _common.time_fn(lambda: jax.block_until_ready(run(jnp.asarray(plan.init), xs_long,
                                                            dts_long)),
                        warmup=3, repeats=20)
    return t["median_ms"] * 1e3 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=None, help="timed calls per implementation")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sync-dispatch", action="store_true",
                    help="run XLA:CPU executables on the calling thread "
                         "(jax_cpu_enable_async_dispatch=False)")
    ap.add_argument("--block", type=int, default=100,
                    help="consecutive calls of one implementation per turn (default 100)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--no-c", action="store_true", help="without the C backend")
    ap.add_argument("--write-md", action="store_true",
                    help="rewrite the 'streaming' section of BENCHMARKS.md (quiet machine only)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    threads = _common.pin_threads(args.threads)
    import jax

    if args.sync_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    import numpy as np
    import torch

    from liquidjax import export

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    ort = None
    if not args.no_onnx:
        try:
            import onnxruntime as ort
        except ImportError as e:
            print(f"onnxruntime not importable ({e}); no ONNX column "
                  "(pip install 'liquidjax[export]')")
    calls = args.calls or (300 if args.quick else 3000)
    info = _common.machine_info()
    print(f"machine: {_common.machine_line(info)}")
    print(f"threads: {threads}; batch 1, {INPUTS} inputs, {UNITS} units; {calls} calls each, "
          f"interleaved in blocks of {args.block}, median; JAX dispatch "
          f"{'sync' if args.sync_dispatch else 'async (default)'}")

    rng = np.random.default_rng(args.seed)
    xs = rng.normal(size=(SEQ, INPUTS)).astype(np.float32)
    dts = rng.uniform(0.5, 1.5, size=SEQ).astype(np.float32)
    rows, payload = [], {"machine": info, "threads": threads, "calls": calls,
                         "sync_dispatch": args.sync_dispatch, "block": args.block,
                         "results": {}}
    for kind in ("ltc", "cfc"):
        tmodel, model = build(kind, args.seed)
        t0 = time.perf_counter()
        step = export.stepper(model)
        build_s = time.perf_counter() - t0
        cstep = None
        if not args.no_c:
            try:
                cstep = export.stepper(model, backend="c")
            except RuntimeError as e:  # no C compiler
                print(f"no C column: {e}")
        sess = None
        if ort is not None:
            d = tempfile.mkdtemp(prefix=f"streaming_{kind}_")
            export.to_onnx(model, d)
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1  # one tiny graph: a thread pool only adds hand-offs
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(os.path.join(d, "step.onnx"), so,
                                        providers=["CPUExecutionProvider"])
        err = check(kind, tmodel, step, cstep, sess, xs, dts)

        x = xs[0]
        dt = np.float32(1.0)
        t_state = [None]
        j_state = [step.initial_state()]
        o_state = [np.asarray(step.initial_state())]
        xt = torch.from_numpy(x[None, None])
        tt = torch.ones((1, 1))

        def ncps_step():
            with torch.inference_mode():
                _, t_state[0] = tmodel(xt, t_state[0], tt)

        def jax_step():
            y, j_state[0] = step(j_state[0], x, dt)
            jax.block_until_ready(y)

        fns = {"ncps": ncps_step, "stepper": jax_step}
        if cstep is not None:
            c_state = [cstep.initial_state()]

            def c_step():
                _, c_state[0] = cstep(c_state[0], x, dt)

            fns["c"] = c_step
        if sess is not None:
            feed_dt = np.array(1.0, np.float32)

            def ort_step():
                _, o_state[0] = sess.run(None, {"state": o_state[0], "x": x, "dt": feed_dt})

            fns["onnxruntime"] = ort_step
        t = _common.time_interleaved(fns, warmup=max(50, calls // 20),
                                     repeats={k: calls for k in fns}, block=args.block)
        us = {k: v["median_ms"] * 1e3 for k, v in t.items()}
        floor = compute_floor_us(model, xs, dts)
        payload["results"][kind] = {"us_per_step": us, "compute_floor_us": floor,
                                    "max_abs_diff_vs_ncps": err, "stepper_build_s": build_s}
        rows.append([f"{kind.upper()}-{UNITS}", f"{us['ncps']:.0f}", f"{us['stepper']:.1f}",
                     f"{us['ncps'] / us['stepper']:.1f}×",
                     f"{us['c']:.2f}" if "c" in us else "–",
                     f"{us['ncps'] / us['c']:.0f}×" if "c" in us else "–",
                     f"{us['onnxruntime']:.1f}" if "onnxruntime" in us else "–",
                     f"{floor:.2f}", f"{err:.1e}"])
    own = step.device != jax.devices()[0]
    where = ("its own synchronous XLA:CPU client" if own else f"the default {step.device.platform} "
             "client")
    print(f"\nstepper ran on {where}")
    table = _common.md_table(
        ["model", "ncps step (µs)", "liquidjax stepper (µs)", "speed-up",
         "C stepper (µs)", "C speed-up", "ONNX Runtime (µs)", "compute floor (µs)",
         "max abs diff vs ncps"], rows)
    print()
    print(table)
    path = _common.write_json("streaming.json", payload)
    print(f"\nwrote {path.relative_to(_common.ROOT)}")
    if args.write_md:
        body = (f"### Streaming: one observation, batch 1 ({_common.command_line()})\n\n"
                f"{_common.machine_line(info)}; {threads} threads, {calls} calls each, "
                f"interleaved in blocks of {args.block}, median; the stepper on {where}."
                f"\n\n{table}\n")
        _common.update_benchmarks_md("streaming", body)
        print("updated BENCHMARKS.md (streaming)")


if __name__ == "__main__":
    main()
