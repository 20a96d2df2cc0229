"""Solver accuracy / cost trade-off for one LTC cell on a fixed input sequence.

The cell (32 units fully connected, 4 inputs, ncps init, one example) runs over 16 observations
with the input held over each unit interval (ncps semantics). For every solver —

* the fused semi-implicit step (ncps's scheme) with 1 … 12 unfolds (the fused fast path),
* Euler, Heun, Midpoint, Tsit5, Dopri5, Kvaerno5 with constant steps (``ode_unfolds`` per
  interval) and adaptive ``diffrax.PIDController`` at several tolerances —

it records

* the error: max |v − v_ref| over all neurons and observation times, against a tight reference
  (scipy ``solve_ivp(method="Radau", rtol=1e-10, atol=1e-12)`` in float64 on the cell's own
  ``vector_field``, with its exact Jacobian);
* vector-field evaluations over the sequence, counted exactly at run time by
  ``liquidjax.solvers.count_vf_evals`` (host callback in the term). For the fused rows the count
  comes from the same solver run through ``diffeqsolve`` (the fast path bypasses the term) and is
  checked against ``unfolds × observations``;
* forward and gradient (d Σ v_final² / d parameters) wall time, median after warm-up;
* compile time (lower + compile) of the forward and of the gradient;
* peak memory of the gradient: XLA's compiled memory analysis (temporaries + arguments + outputs
  of the compiled executable, MiB) — the activations/residuals kept for the backward pass are the
  temporaries.

Writes ``benchmarks/results/solvers.csv`` and ``solvers_pareto.png`` (error vs forward time and vs
gradient time, log-log); the full run also rewrites the ``solvers`` section of ``BENCHMARKS.md``.

    python benchmarks/solvers.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

UNITS, INPUTS, OBS = 32, 4, 16


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer solvers and repeats")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-md", action="store_true", help="do not rewrite BENCHMARKS.md")
    return p.parse_args(argv)


def make_problem():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from liquidjax.cells import LTC

    cell = LTC(INPUTS, UNITS, key=jax.random.key(42))
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((OBS, INPUTS)), jnp.float32)
    return cell, xs


def reference(cell, xs):
    """Float64 Radau solution at the observation times (OBS, UNITS), and the stiffness
    (largest |eigenvalue| of the Jacobian along the reference trajectory)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from scipy.integrate import solve_ivp

    with jax.enable_x64(True):
        cell64 = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64) if isinstance(a, jax.Array)
            and jnp.issubdtype(a.dtype, jnp.floating) else a, cell)
        vf = jax.jit(lambda y, x: cell64.vector_field(0.0, y, x))
        jac = jax.jit(jax.jacfwd(lambda y, x: cell64.vector_field(0.0, y, x)))
        y = np.zeros(UNITS)
        out, lam = [], 0.0
        for x in np.asarray(xs, np.float64):
            xj = jnp.asarray(x)
            sol = solve_ivp(lambda t, v: np.asarray(vf(jnp.asarray(v), xj)), (0.0, 1.0), y,
                            method="Radau", rtol=1e-10, atol=1e-12,
                            jac=lambda t, v: np.asarray(jac(jnp.asarray(v), xj)))
            if not sol.success:
                raise SystemExit(f"reference solve failed: {sol.message}")
            for v in (y, sol.y[:, -1]):
                lam = max(lam, float(np.abs(np.linalg.eigvals(np.asarray(jac(jnp.asarray(v), xj))))
                                     .max()))
            y = sol.y[:, -1]
            out.append(y)
    return np.stack(out), lam


def solver_rows(quick: bool):
    """(label, family, solver factory, unfolds, controller factory or None)."""
    import diffrax

    from liquidjax.solvers import FusedSemiImplicit

    rows = []
    for k in ([1, 2, 3, 6, 12] if quick else range(1, 13)):
        rows.append((f"fused x{k}", "fused", FusedSemiImplicit, k, None))
    const_steps = [2, 6] if quick else [2, 6, 16]
    explicit = [("euler", diffrax.Euler), ("heun", diffrax.Heun),
                ("midpoint", diffrax.Midpoint), ("tsit5", diffrax.Tsit5),
                ("dopri5", diffrax.Dopri5)]
    for name, s in explicit:
        for k in const_steps:
            rows.append((f"{name} x{k}", name, s, k, None))
    # Constant steps with an implicit solver need the Newton tolerances set explicitly.
    def kvaerno5_const():
        return diffrax.Kvaerno5(root_finder=diffrax.VeryChord(rtol=1e-6, atol=1e-6))

    for k in ([1, 2] if quick else [1, 2, 6]):
        rows.append((f"kvaerno5 x{k}", "kvaerno5", kvaerno5_const, k, None))
    tols = [1e-3, 1e-5] if quick else [1e-2, 1e-4, 1e-6]
    for name, s in [("heun", diffrax.Heun), ("tsit5", diffrax.Tsit5),
                    ("dopri5", diffrax.Dopri5), ("kvaerno5", diffrax.Kvaerno5)]:
        # Kvaerno5 at 1e-6 in float32 runs for minutes (its Newton tolerance follows rtol).
        kv = sorted({t for t in tols if t >= 1e-5} | {1e-5}, reverse=True)
        for tol in (tols if name != "kvaerno5" else kv):
            rows.append((f"{name} pid {tol:g}", name, s, 6,
                         lambda tol=tol: diffrax.PIDController(rtol=tol, atol=tol)))
    return rows


def configure(cell, solver, unfolds, controller):
    """The same cell (same key, so the same parameters) with another solver / step count."""
    import jax
    import numpy as np

    from liquidjax.cells import LTC

    new = LTC(INPUTS, UNITS, key=jax.random.key(42), solver=solver, stepsize_controller=controller,
              ode_unfolds=unfolds)
    same = [np.array_equal(a, b) for a, b in zip(cell.effective_params(), new.effective_params())]
    if not all(same):
        raise SystemExit("re-building the cell with another solver changed its parameters")
    return new


def run_row(cell, xs, label, family, solver_cls, unfolds, ctrl_fn, ref, warmup, repeats):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from liquidjax.solvers import count_vf_evals

    c = configure(cell, solver_cls(), unfolds, None if ctrl_fn is None else ctrl_fn())

    def states(c, xs):
        # The hidden states after every observation (the LTC's output map is the identity at
        # init, but compare states, not outputs, to be independent of it).
        def step(h, x):
            h = c.advance(h, x, 0.0, 1.0)
            return h, h

        return jax.lax.scan(step, c.init_state(), xs)[1]

    def general_states(c, xs):  # always through diffeqsolve (so the term counts evaluations)
        def step(h, x):
            h = c.solve(h, x, 0.0, 1.0).ys[-1]
            return h, h

        return jax.lax.scan(step, c.init_state(), xs)[1]

    fwd = eqx.filter_jit(states)

    def loss(c, xs):
        return jnp.sum(states(c, xs)[-1] ** 2)

    grad = eqx.filter_jit(eqx.filter_grad(loss))

    t0 = time.perf_counter()
    fwd.lower(c, xs).compile()
    compile_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled_grad = grad.lower(c, xs).compile()
    compile_grad = time.perf_counter() - t0
    mem = _common.compiled_memory(compiled_grad)

    hs = np.asarray(fwd(c, xs))
    err = float(np.abs(hs - ref).max()) if np.all(np.isfinite(hs)) else float("inf")
    if err > 1e3:  # the reference stays within the reversal potentials (|v| <~ 1): diverged
        err = float("inf")
    g = grad(c, xs)
    gfinite = all(bool(jnp.all(jnp.isfinite(leaf)))
                  for leaf in jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array)))

    hs_general, nfe = count_vf_evals(lambda xs: general_states(c, xs), xs)
    if family == "fused":
        expected = unfolds * OBS
        if nfe != expected:
            raise SystemExit(f"{label}: count_vf_evals gave {nfe}, expected {expected}")
        diff = float(np.abs(np.asarray(hs_general) - hs).max())
        if diff > 1e-5:
            raise SystemExit(f"{label}: fused kernel and diffeqsolve path differ by {diff:.2e}")

    tf = _common.time_fn(lambda: jax.block_until_ready(fwd(c, xs)), warmup=warmup,
                         repeats=repeats)
    tg = _common.time_fn(lambda: jax.block_until_ready(grad(c, xs)), warmup=warmup,
                         repeats=repeats)
    return {
        "solver": label, "family": family, "adaptive": ctrl_fn is not None,
        "steps_per_interval": "adaptive" if ctrl_fn is not None else unfolds,
        "max_abs_error": err, "vf_evals": nfe, "vf_evals_per_interval": nfe / OBS,
        "forward_ms": tf["median_ms"], "grad_ms": tg["median_ms"],
        "compile_forward_s": compile_fwd, "compile_grad_s": compile_grad,
        "grad_peak_mb": None if mem is None else mem["total_mb"],
        "grad_temp_mb": None if mem is None else mem["temp_mb"],
        "grad_finite": gfinite,
    }


def _error_line(e: Exception) -> str:
    """The informative line of an (Equinox runtime) error, e.g. 'Nonlinear solve diverged.'."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    for l in lines:
        if "Error:" in l:
            return l.split("Error:", 1)[1].strip()[:200]
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    families = sorted({r["family"] for r in rows})
    cmap = plt.get_cmap("tab10")
    for ax, key, title in ((axes[0], "forward_ms", "forward"), (axes[1], "grad_ms", "gradient")):
        for i, fam in enumerate(families):
            for adaptive, marker in ((False, "o"), (True, "^")):
                pts = [r for r in rows if r["family"] == fam and r["adaptive"] == adaptive
                       and r["max_abs_error"] < float("inf")]
                if not pts:
                    continue
                ax.scatter([r[key] for r in pts], [max(r["max_abs_error"], 1e-9) for r in pts],
                           color=cmap(i), marker=marker,
                           label=f"{fam} ({'PID' if adaptive else 'constant'})")
                if fam == "fused":
                    pts = sorted(pts, key=lambda r: r["steps_per_interval"])
                    ax.plot([r[key] for r in pts], [r["max_abs_error"] for r in pts],
                            color=cmap(i), lw=0.8)
        # Pareto front: no other point both faster and more accurate.
        finite = sorted((r for r in rows if r["max_abs_error"] < float("inf")),
                        key=lambda r: r[key])
        front, best = [], float("inf")
        for r in finite:
            if r["max_abs_error"] < best:
                front.append(r)
                best = r["max_abs_error"]
        ax.step([r[key] for r in front], [max(r["max_abs_error"], 1e-9) for r in front],
                where="post", color="k", lw=1, ls="--", label="Pareto front")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{title} wall time per sequence (ms, median)")
        ax.set_title(f"LTC-{UNITS}, {OBS} observations: error vs {title} time")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("max |v − v_ref| over neurons and observations")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    threads = _common.pin_threads(args.threads)
    import jax

    info = _common.machine_info()
    warmup = 1 if args.quick else 2
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"machine: {_common.machine_line(info)}; threads {threads}; device {jax.devices()[0]}")
    cell, xs = make_problem()
    t0 = time.perf_counter()
    ref, lam = reference(cell, xs)
    print(f"reference: Radau rtol 1e-10 atol 1e-12 in float64, {OBS} unit intervals "
          f"({time.perf_counter() - t0:.1f} s); stiffness max|λ(J)| = {lam:.1f} per unit time "
          f"(explicit Euler needs > {lam / 2:.1f} steps per interval to be stable)", flush=True)

    rows = []
    for label, family, solver_cls, unfolds, ctrl_fn in solver_rows(args.quick):
        try:
            r = run_row(cell, xs, label, family, solver_cls, unfolds, ctrl_fn, ref, warmup,
                        repeats)
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001 - a failing solver is a result, not a crash
            msg = _error_line(e)
            print(f"  {label:20s} FAILED: {msg}")
            rows.append({"solver": label, "family": family, "adaptive": ctrl_fn is not None,
                         "steps_per_interval": unfolds, "max_abs_error": float("inf"),
                         "error": msg})
            continue
        rows.append(r)
        print(f"  {label:20s} err {r['max_abs_error']:9.2e}  vf/interval "
              f"{r['vf_evals_per_interval']:7.1f}  fwd {r['forward_ms']:8.2f} ms  grad "
              f"{r['grad_ms']:8.2f} ms  compile {r['compile_forward_s']:.2f}+"
              f"{r['compile_grad_s']:.2f} s  grad mem {r['grad_peak_mb'] or 0:.2f} MiB"
              f"{'' if r['grad_finite'] else '  (grad not finite)'}", flush=True)

    _common.RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    csv_path = _common.RESULTS / f"solvers{suffix}.csv"
    fields = ["solver", "family", "adaptive", "steps_per_interval", "max_abs_error", "vf_evals",
              "vf_evals_per_interval", "forward_ms", "grad_ms", "compile_forward_s",
              "compile_grad_s", "grad_peak_mb", "grad_temp_mb", "grad_finite", "error"]
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    png = _common.RESULTS / f"solvers_pareto{suffix}.png"
    if any("forward_ms" in r for r in rows):
        plot([r for r in rows if "forward_ms" in r], png)
    _common.write_json(f"solvers{suffix}.json", {"machine": info, "threads": threads,
                                                 "stiffness": lam, "rows": rows})
    print(f"wrote {csv_path} and {png}")

    if not args.quick and not args.no_md:
        table = _common.md_table(
            ["solver", "steps/interval", "max error", "vf evals", "forward ms", "grad ms",
             "compile fwd+grad s", "grad memory MiB"],
            [[r["solver"], r["steps_per_interval"],
              f"{r['max_abs_error']:.2e}" if r["max_abs_error"] < float("inf")
              else ("failed: " + r["error"] if r.get("error") else "diverged"),
              r.get("vf_evals", "–"), _common.fmt_ms(r.get("forward_ms")),
              _common.fmt_ms(r.get("grad_ms")),
              f"{r['compile_forward_s']:.2f}+{r['compile_grad_s']:.2f}"
              if "compile_forward_s" in r else "–",
              f"{r['grad_peak_mb']:.2f}" if r.get("grad_peak_mb") is not None else "–"]
             for r in rows])
        body = (f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `{_common.command_line()}` on "
                f"{_common.machine_line(info)}; {threads} threads. LTC-{UNITS} (fully connected, "
                f"{INPUTS} inputs, ncps init, seed 42), one example, {OBS} unit intervals with "
                f"held inputs; reference: scipy Radau (rtol 1e-10, atol 1e-12, float64) on the "
                f"cell's `vector_field`; stiffness max|λ(J)| ≈ {lam:.1f}. Error = max |v − v_ref| "
                f"over neurons and observation times (float32 solvers). Memory = XLA compiled "
                f"memory analysis of the gradient (arguments + outputs + temporaries).\n\n"
                f"![Pareto plot](benchmarks/results/solvers_pareto.png)\n\n" + table)
        _common.update_benchmarks_md("solvers", body)


if __name__ == "__main__":
    main()
