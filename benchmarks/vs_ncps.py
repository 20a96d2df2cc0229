"""liquidjax vs ncps 1.0.1 (PyTorch, CPU): train step and inference forward, side by side.

For every configuration of issue 4 this script

1. builds the ncps model (``ncps.torch.LTC`` / ``ncps.torch.CfC``, ``return_sequences=False``,
   then a 10-class ``nn.Linear`` readout), copies its weights into liquidjax with
   ``liquidjax.interop.ncps.from_ncps`` (+ the readout), and **checks that both give the same
   cross-entropy loss and the same gradient for every parameter** — it exits with an error if
   they do not;
2. times the training step (forward + backward + Adam update; liquidjax: one ``eqx.filter_jit``
   call, ``jax.block_until_ready``; torch: ``zero_grad`` / ``backward`` / ``step``) and the
   inference forward (``torch.inference_mode`` / a jitted forward), after warm-up, as the median
   of several repeats, with the same cores and thread count for both, in one of two protocols
   (``--protocol``):

   - ``interleaved`` (default): single calls round-robin (liquidjax train, liquidjax forward,
     ncps train, ncps forward, again ...), so a burst of background load hits both frameworks;
     but a liquidjax call right after an ncps call runs slower than in a run of its own
     (row-wise CfC train step ≈ 9 ms against 6.4 ms; not torch's spinning OpenMP workers:
     ``OMP_WAIT_POLICY=PASSIVE`` leaves it at 9 ms);
   - ``blocks``: blocks of ``--block-calls`` consecutive calls of one measurement (k × liquidjax
     train, k × liquidjax forward, k × ncps train, k × ncps forward), the order reversed every
     other round; each call mostly follows calls of its own kind, as in a program that runs only
     that framework, and the per-call median still sees the same drifting load on both sides;
3. prints a table (ms per step, ncps / liquidjax ratio = speed-up) and the JAX compile time.

Without torch/ncps it times liquidjax alone. ``--quick`` cuts the repeats (for development);
the full run also rewrites the ``vs_ncps`` section of ``BENCHMARKS.md``.

    python benchmarks/vs_ncps.py                      # all configurations, full repeats
    python benchmarks/vs_ncps.py --quick --config rowwise_ltc
    python benchmarks/vs_ncps.py --ltc --no-md        # only the row-wise LTC rows (dense,
                                                      # AutoNCP(64, 10), AutoNCP(128, 10))
    python benchmarks/vs_ncps.py --ltc --ltc-synapses dense --no-md   # the same, dense kernel
    python benchmarks/vs_ncps.py --ltc --ltc-kernel portable --no-md  # the per-example kernels
                                                      # forced on the wired cells (before/after)
    python benchmarks/vs_ncps.py --protocol blocks --block-calls 5    # blocks of 5 calls per
                                                      # measurement, order alternating per round

The last lines printed are the ratios side by side (ncps ms / liquidjax ms, train and forward).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (must come before jax/torch: pins the threads)


@dataclasses.dataclass(frozen=True)
class Config:
    kind: str  # "ltc" | "cfc"
    batch: int
    steps: int
    inputs: int
    units: int
    classes: int = 10
    backbone_units: int = 128
    ncp_outputs: int | None = None  # the cell over AutoNCP(units, ncp_outputs), not dense
    description: str = ""

    def wiring(self, ncps_module=None):
        """The cell's ``units`` argument: an int, or ``AutoNCP(units, ncp_outputs)`` from ncps
        (``ncps_module="ncps.wirings"``) or liquidjax (default)."""
        if self.ncp_outputs is None:
            return self.units
        if ncps_module == "ncps":
            from ncps.wirings import AutoNCP
        else:
            from liquidjax.wirings import AutoNCP
        return AutoNCP(self.units, self.ncp_outputs)

    @property
    def rnn_outputs(self) -> int:
        return self.units if self.ncp_outputs is None else self.ncp_outputs


CONFIGS: dict[str, Config] = {
    "rowwise_ltc": Config("ltc", 128, 32, 96, 64,
                          description="row-wise image: B128 × 32 steps × 96 in, LTC-64 FC, "
                                      "6 unfolds"),
    "rowwise_ltc_ncp64": Config("ltc", 128, 32, 96, 64, ncp_outputs=10,
                                description="row-wise image: B128 × 32 steps × 96 in, LTC "
                                            "AutoNCP(64, 10), 6 unfolds"),
    "rowwise_ltc_ncp128": Config("ltc", 128, 32, 96, 128, ncp_outputs=10,
                                 description="row-wise image: B128 × 32 steps × 96 in, LTC "
                                             "AutoNCP(128, 10), 6 unfolds"),
    "rowwise_cfc": Config("cfc", 128, 32, 96, 64,
                          description="row-wise image: B128 × 32 steps × 96 in, CfC-64, "
                                      "backbone 128"),
    "rowwise_wired_cfc": Config("cfc", 128, 32, 96, 64, ncp_outputs=10,
                                description="row-wise image: B128 × 32 steps × 96 in, wired CfC "
                                            "AutoNCP(64, 10) (no backbone)"),
    "long_ltc": Config("ltc", 32, 256, 3, 32,
                       description="long sequence: B32 × 256 steps × 3 in, LTC-32 FC, 6 unfolds"),
    "long_cfc": Config("cfc", 32, 256, 3, 32,
                       description="long sequence: B32 × 256 steps × 3 in, CfC-32, backbone 128"),
}

# Targets (ncps time / liquidjax time), train and forward: issue 10 for the row-wise LTC rows,
# issue 4 for the others.
TARGETS = {"ltc": (8.0, 8.0), "cfc": (2.5, 2.5)}
CONFIG_TARGETS = {"rowwise_ltc": (3.0, 2.5), "rowwise_ltc_ncp64": (6.0, 6.0),
                  "rowwise_ltc_ncp128": (6.0, 6.0), "rowwise_cfc": (2.5, 2.5)}
LTC_CONFIGS = ("rowwise_ltc", "rowwise_ltc_ncp64", "rowwise_ltc_ncp128")


def target(r: dict, what: str) -> float:
    t = CONFIG_TARGETS.get(r["config"], TARGETS[r["kind"]])
    return t[0] if what == "train" else t[1]

PROTOCOLS = ("interleaved", "blocks")

LOSS_RTOL = 1e-4
GRAD_TOL = 2e-3  # max |g_jax - g_torch| <= GRAD_TOL * max |g_torch| (+ 1e-7), per tensor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=__doc__[__doc__.index("    python "):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few repeats (development)")
    p.add_argument("--config", action="append", choices=sorted(CONFIGS),
                   help="run only this configuration (repeatable); default: all")
    p.add_argument("--ltc", action="store_true",
                   help=f"run only the row-wise LTC configurations {', '.join(LTC_CONFIGS)} "
                        "(added to any --config)")
    p.add_argument("--ltc-synapses", choices=("auto", "dense", "sparse"), default="auto",
                   help="LTC synapse kernel of the liquidjax models (default auto: sparse for "
                        "sparse wirings); 'dense' measures the masked dense kernel for comparison")
    p.add_argument("--ltc-kernel", choices=("auto", "portable"), default="auto",
                   help="the LTC's fused-step kernel: batch-aware (C++ on CPU when built) or "
                        "the per-example pure-JAX one")
    p.add_argument("--threads", type=int, default=None,
                   help="cores/threads for both frameworks (default: all cores of this process)")
    p.add_argument("--jax-devices", type=int, default=None,
                   help="XLA CPU devices the JAX batch is sharded over (default 1; "
                        "XLA:CPU runs each kernel on one thread: N devices use N cores)")
    p.add_argument("--repeats", type=int, default=None, help="override the number of repeats")
    p.add_argument("--protocol", choices=PROTOCOLS, default="interleaved",
                   help="interleaved: single calls of the four measurements round-robin "
                        "(default); blocks: --block-calls consecutive calls of each, the order "
                        "reversed every other round (no call right after the other framework's, "
                        "except a block's first); both report per-call medians")
    p.add_argument("--block-calls", type=int, default=5,
                   help="calls per block with --protocol blocks (default 5)")
    p.add_argument("--no-ncps", action="store_true", help="time liquidjax only")
    p.add_argument("--no-md", action="store_true", help="do not rewrite BENCHMARKS.md")
    p.add_argument("--from-json", type=Path, default=None,
                   help="do not measure: rebuild the table (and BENCHMARKS.md) from a results file")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results path (default benchmarks/results/vs_ncps[_quick].json)")
    args = p.parse_args(argv)
    if args.block_calls < 1:
        p.error(f"--block-calls must be at least 1, got {args.block_calls}")
    return args


# ---------------------------------------------------------------------------------------- torch
def build_torch(cfg: Config, seed: int):
    import torch
    from ncps.torch import LTC as TLTC, CfC as TCfC

    torch.manual_seed(seed)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            if cfg.kind == "ltc":
                self.rnn = TLTC(cfg.inputs, cfg.wiring("ncps"), return_sequences=False,
                                batch_first=True)
            else:
                self.rnn = TCfC(cfg.inputs, cfg.wiring("ncps"), return_sequences=False,
                                batch_first=True, **cfc_backbone(cfg))
            self.fc = torch.nn.Linear(cfg.rnn_outputs, cfg.classes)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.fc(y)

    return Model()


def torch_state_dict(model) -> dict:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ jax
def build_jax(cfg: Config, sd: dict | None, seed: int, synapses: str = "auto",
              kernel: str = "auto"):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from liquidjax.interop.ncps import from_ncps

    class Classifier(eqx.Module):
        rnn: eqx.Module
        head: eqx.nn.Linear

        def __call__(self, x):
            y, _ = self.rnn(x)  # return_sequences=False: the last output
            return self.head(y)

    kw = {} if cfg.kind == "ltc" else cfc_backbone(cfg)
    if sd is None:  # no torch: liquidjax's own init
        from liquidjax.cells import LTC, CfC, WiredCfC
        from liquidjax.layers import LiquidRNN

        k1, k2 = jax.random.split(jax.random.key(seed))
        if cfg.kind == "ltc":
            cell = LTC(cfg.inputs, cfg.wiring(), key=k1)
        elif cfg.ncp_outputs is None:
            cell = CfC(cfg.inputs, cfg.units, key=k1, **kw)
        else:
            cell = WiredCfC(cfg.inputs, cfg.wiring(), key=k1)
        return Classifier(LiquidRNN(with_synapses(cell, synapses, kernel),
                                    return_sequences=False),
                          eqx.nn.Linear(cfg.rnn_outputs, cfg.classes, key=k2))
    rnn_sd = {k[len("rnn."):]: v for k, v in sd.items() if k.startswith("rnn.")}
    units = cfg.wiring()
    rnn = from_ncps(rnn_sd, kind=cfg.kind, input_size=cfg.inputs, units=units,
                    return_sequences=False, **kw)
    rnn = eqx.tree_at(lambda r: r.cell, rnn, with_synapses(rnn.cell, synapses, kernel))
    head = eqx.nn.Linear(cfg.rnn_outputs, cfg.classes, key=jax.random.key(0))
    head = eqx.tree_at(lambda h: (h.weight, h.bias), head,
                       (jnp.asarray(sd["fc.weight"]), jnp.asarray(sd["fc.bias"])))
    return Classifier(rnn, head)


def cfc_backbone(cfg: Config) -> dict:
    """The ncps CfC's backbone arguments: one layer of ``backbone_units``; none for a wired CfC
    (ncps refuses them)."""
    if cfg.ncp_outputs is not None:
        return {}
    return {"backbone_units": cfg.backbone_units, "backbone_layers": 1}


def with_synapses(cell, synapses: str, kernel: str = "auto"):
    """``cell`` with its LTC synapse evaluation and kernel set (``"auto"`` leaves them as
    built)."""
    from liquidjax.cells import LTC

    if not isinstance(cell, LTC):
        return cell
    cell = cell if synapses == "auto" else cell.with_synapses(synapses)
    return cell if kernel == "auto" else cell.with_kernel(kernel)


def jax_fns(lr: float):
    return _common.classifier_fns(lr)


def jax_grads_as_state_dict(grads) -> dict:
    import numpy as np

    from liquidjax.interop.ncps import to_ncps

    out = {"rnn." + k: v for k, v in to_ncps(grads.rnn).items()}
    out["fc.weight"] = np.asarray(grads.head.weight)
    out["fc.bias"] = np.asarray(grads.head.bias)
    return out


# ------------------------------------------------------------------------------------ the check
def check_equal(cfg: Config, tmodel, jmodel, x, y, loss_and_grad) -> dict:
    """Same loss and gradients from ncps and liquidjax, or SystemExit."""
    import numpy as np
    import torch

    tmodel.zero_grad()
    loss_t = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)),
                                               torch.from_numpy(y).long())
    loss_t.backward()
    loss_j, grads_j = loss_and_grad(jmodel, x, y)
    loss_t, loss_j = float(loss_t.detach()), float(loss_j)
    gj = jax_grads_as_state_dict(grads_j)
    worst, worst_name, failures = 0.0, "", []
    for name, p in tmodel.named_parameters():
        if p.grad is None:
            continue
        gt = p.grad.numpy()
        if name not in gj:
            failures.append(f"{name}: no liquidjax gradient")
            continue
        g = np.asarray(gj[name]).reshape(gt.shape)
        scale = float(np.abs(gt).max())
        err = float(np.abs(g - gt).max())
        rel = err / (scale + 1e-7)
        if rel >= worst:
            worst, worst_name = rel, name
        if err > GRAD_TOL * scale + 1e-7:
            failures.append(f"{name}: max|Δg| = {err:.3g} vs max|g| = {scale:.3g}")
    loss_rel = abs(loss_t - loss_j) / abs(loss_t)
    if loss_rel > LOSS_RTOL:
        failures.insert(0, f"loss: ncps {loss_t:.7g} vs liquidjax {loss_j:.7g}")
    if failures:
        raise SystemExit(f"[{cfg.kind}] liquidjax and ncps disagree:\n  " + "\n  ".join(failures))
    return {"loss_ncps": loss_t, "loss_liquidjax": loss_j, "loss_rel_diff": loss_rel,
            "grad_max_rel_diff": worst, "grad_worst_tensor": worst_name}


# ------------------------------------------------------------------------------------ benchmark
def run_config(name: str, cfg: Config, *, use_ncps: bool, warmup: int, repeats: int,
               ncps_repeats: int, synapses: str = "auto", kernel: str = "auto",
               protocol: str = "interleaved", block_calls: int = 1) -> dict:
    import equinox as eqx
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((cfg.batch, cfg.steps, cfg.inputs)).astype(np.float32)
    y = rng.integers(0, cfg.classes, cfg.batch).astype(np.int32)
    lr = 1e-3
    res: dict = {"config": name, **dataclasses.asdict(cfg)}

    tmodel = build_torch(cfg, seed=0) if use_ncps else None
    sd = torch_state_dict(tmodel) if use_ncps else None
    jmodel = build_jax(cfg, sd, seed=0, synapses=synapses, kernel=kernel)
    from liquidjax.cells import LTC

    cell = jmodel.rnn.cell
    res["ltc_synapses"] = cell.synapse_kernel if isinstance(cell, LTC) else None
    res["ltc_kernel"] = cell.kernel if isinstance(cell, LTC) else None
    opt, train_step, forward, loss_and_grad = jax_fns(lr)
    xj, yj = jax.device_put(x), jax.device_put(y)

    if use_ncps:
        res["check"] = check_equal(cfg, tmodel, jmodel, x, y, loss_and_grad)
        print(f"  check: loss ncps {res['check']['loss_ncps']:.6f} liquidjax "
              f"{res['check']['loss_liquidjax']:.6f}; max rel grad diff "
              f"{res['check']['grad_max_rel_diff']:.1e}  OK", flush=True)

    # ---- liquidjax: batch sharded over the CPU devices (one per core), parameters replicated
    n_dev = len(jax.devices())
    if n_dev > 1 and cfg.batch % n_dev == 0:
        from jax.sharding import AxisType, NamedSharding, PartitionSpec

        mesh = jax.make_mesh((n_dev,), ("batch",), (AxisType.Auto,))
        xj = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))
        yj = jax.device_put(y, NamedSharding(mesh, PartitionSpec("batch")))
        rep = NamedSharding(mesh, PartitionSpec())
        jmodel = jax.tree_util.tree_map(
            lambda a: jax.device_put(a, rep) if eqx.is_array(a) else a, jmodel)
    res["jax_devices"] = n_dev
    opt_state = opt.init(eqx.filter(jmodel, eqx.is_inexact_array))
    t0 = time.perf_counter()
    compiled_step = train_step.lower(jmodel, opt_state, xj, yj).compile()
    res["jax_compile_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    forward.lower(jmodel, xj).compile()
    res["jax_compile_forward_s"] = time.perf_counter() - t0
    del compiled_step
    state = [jmodel, opt_state]

    def jax_train():
        m, s, loss = train_step(state[0], state[1], xj, yj)
        jax.block_until_ready(loss)
        state[0], state[1] = m, s

    def jax_fwd():
        jax.block_until_ready(forward(jmodel, xj))

    fns = {"jax_train": jax_train, "jax_forward": jax_fwd}
    reps = {"jax_train": repeats, "jax_forward": repeats}
    if use_ncps:
        import torch

        xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
        topt = torch.optim.Adam(tmodel.parameters(), lr=lr)

        def torch_train():
            topt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(tmodel(xt), yt)
            loss.backward()
            topt.step()

        def torch_fwd():
            with torch.inference_mode():
                tmodel(xt)

        fns.update(ncps_train=torch_train, ncps_forward=torch_fwd)
        reps.update(ncps_train=ncps_repeats, ncps_forward=ncps_repeats)
    # Round-robin over the four measurements (single calls or blocks; see the module doc): a
    # burst of background load hits both frameworks.
    blocks = protocol == "blocks"
    res.update(_common.time_interleaved(fns, warmup=warmup, repeats=reps,
                                        block=block_calls if blocks else 1, alternate=blocks))
    loss_after = float(train_step(state[0], state[1], xj, yj)[2])
    if not np.isfinite(loss_after):
        raise SystemExit(f"[{name}] liquidjax loss became {loss_after} after training steps")
    if use_ncps:
        res["speedup_train"] = res["ncps_train"]["median_ms"] / res["jax_train"]["median_ms"]
        res["speedup_forward"] = (res["ncps_forward"]["median_ms"]
                                  / res["jax_forward"]["median_ms"])
    return res


def table(results: list[dict]) -> str:
    header = ["configuration", "what", "ncps ms (min)", "liquidjax ms (min)",
              "speed-up (medians)", "speed-up (mins)", "target", "JAX compile s"]
    rows = []
    for r in results:
        for what, key in (("train step", "train"), ("forward", "forward")):
            goal = target(r, key)
            nc = r.get(f"ncps_{key}")
            jx = r[f"jax_{key}"]

            def cell(t):
                return ("–" if t is None else
                        f"{_common.fmt_ms(t['median_ms'])} ({_common.fmt_ms(t['min_ms'])})")

            def sp(a, b):
                if nc is None:
                    return "–"
                v = nc[a] / jx[b]
                return f"{v:.2f}×" + (" ✓" if v >= goal else " ✗")

            comp = r[f"jax_compile_{key}_s"]
            rows.append([r["config"], what, cell(nc), cell(jx), sp("median_ms", "median_ms"),
                         sp("min_ms", "min_ms"), f"≥ {goal:g}×", f"{comp:.2f}"])
    return _common.md_table(header, rows)


def ratios(results: list[dict]) -> str:
    """One line per configuration: train and forward speed-ups side by side (medians, mins)."""
    lines = [f"{'configuration':22s} {'kernel':7s} {'train (med / min)':>22s} "
             f"{'forward (med / min)':>22s}"]
    for r in results:
        cells = []
        for key in ("train", "forward"):
            nc, jx = r.get(f"ncps_{key}"), r[f"jax_{key}"]
            if nc is None:
                cells.append(f"{jx['median_ms']:.1f} ms (no ncps)")
                continue
            cells.append(f"{nc['median_ms'] / jx['median_ms']:.2f}x / "
                         f"{nc['min_ms'] / jx['min_ms']:.2f}x (≥{target(r, key):g})")
        lines.append(f"{r['config']:22s} {str(r.get('ltc_synapses') or '-'):7s} "
                     f"{cells[0]:>22s} {cells[1]:>22s}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.from_json is not None:
        import json

        payload = json.loads(args.from_json.read_text())
        print(table(payload["results"]))
        if not args.no_md and not payload["quick"]:
            write_md(payload)
        return
    threads = _common.pin_threads(args.threads)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={args.jax_devices or 1}").strip()
    import jax

    use_ncps = not args.no_ncps
    if use_ncps:
        try:
            import ncps.torch  # noqa: F401
            import torch

            torch.set_num_threads(threads)
            torch.set_num_interop_threads(1)
        except ImportError as e:
            print(f"ncps/torch not importable ({e}); timing liquidjax only. "
                  "Install with: pip install 'torch==2.13.0' 'ncps==1.0.1'", flush=True)
            use_ncps = False

    warmup = 2 if args.quick else 3
    repeats = args.repeats or (5 if args.quick else 20)
    ncps_repeats = args.repeats or (3 if args.quick else 10)
    names = list(args.config or [])
    if args.ltc:
        names += [n for n in LTC_CONFIGS if n not in names]
    names = names or list(CONFIGS)
    info = _common.machine_info()
    print(f"machine: {_common.machine_line(info)}")
    from liquidjax import _native

    native = _native.available()
    print(native_line(native))
    print(f"threads: {threads} (torch.set_num_threads and the CPU affinity XLA sizes its pool "
          f"from); jax devices {len(jax.devices())} (batch sharded); warm-up {warmup}, "
          f"repeats liquidjax {repeats}"
          f"{f', ncps {ncps_repeats}' if use_ncps else ''} (median); protocol "
          f"{protocol_line(args.protocol, args.block_calls)}", flush=True)

    results = []
    for name in names:
        cfg = CONFIGS[name]
        print(f"\n== {name}: {cfg.description} ({cfg.steps} steps per sequence)", flush=True)
        r = run_config(name, cfg, use_ncps=use_ncps, warmup=warmup, repeats=repeats,
                       ncps_repeats=ncps_repeats, synapses=args.ltc_synapses,
                       kernel=args.ltc_kernel, protocol=args.protocol,
                       block_calls=args.block_calls)
        results.append(r)
        for key in ("train", "forward"):
            j = r[f"jax_{key}"]
            line = f"  {key:8s} liquidjax {j['median_ms']:9.2f} ms (min {j['min_ms']:.1f})"
            if use_ncps:
                t = r[f"ncps_{key}"]
                line += (f" | ncps {t['median_ms']:9.2f} ms (min {t['min_ms']:.1f})"
                         f" | speed-up {r[f'speedup_{key}']:.2f}x")
            print(line, flush=True)
        print(f"  JAX compile: train step {r['jax_compile_train_s']:.2f} s, "
              f"forward {r['jax_compile_forward_s']:.2f} s", flush=True)

    tab = table(results)
    print("\n" + tab)
    print("\nspeed-up = ncps ms / liquidjax ms\n" + ratios(results))
    payload = {"machine": info, "threads": threads, "date": time.strftime("%Y-%m-%d %H:%M"),
               "quick": args.quick, "warmup": warmup,
               "repeats": repeats, "ncps_repeats": ncps_repeats if use_ncps else None,
               "ltc_synapses": args.ltc_synapses, "ltc_kernel": args.ltc_kernel,
               "protocol": args.protocol, "block_calls": args.block_calls,
               "native": native, "command": _common.command_line(), "results": results}
    full = (not args.no_md and use_ncps and args.config is None and not args.ltc
            and args.ltc_synapses == "auto" and args.ltc_kernel == "auto")
    # The committed results file is the full table's: a partial or --no-md run writes only to --out.
    out = args.out or (_common.RESULTS / f"vs_ncps{'_quick' if args.quick else ''}.json"
                       if full or args.quick else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(__import__("json").dumps(payload, indent=2, default=str) + "\n")
        print(f"\nwrote {out}")
    if full and not args.quick:
        write_md(payload)
        print(f"updated {_common.BENCHMARKS_MD}")


def protocol_line(protocol: str, block_calls: int | None) -> str:
    """How the calls were ordered, in words (for the printed header and BENCHMARKS.md)."""
    if protocol == "blocks":
        return (f"in blocks of {block_calls} calls per measurement, the order reversed every "
                "other round (`--protocol blocks`)")
    return "interleaved one call at a time (`--protocol interleaved`)"


def native_line(native: bool | None) -> str:
    if native is None:
        return "compiled CPU kernels not recorded"
    return ("liquidjax's compiled CPU kernels (LTC, CfC) in use" if native
            else "liquidjax's compiled CPU kernels UNAVAILABLE: pure JAX measured")


def write_md(payload):
    info = payload["machine"]
    body = (f"Measured {payload.get('date', '')} by `{payload['command']}` on "
            f"{_common.machine_line(info)}; {payload['threads']} threads for both; "
            f"{native_line(payload.get('native'))}; medians (and "
            f"minima) of {payload['repeats']} (liquidjax) / {payload['ncps_repeats']} (ncps) "
            f"calls after warm-up, "
            f"{protocol_line(payload.get('protocol', 'interleaved'), payload.get('block_calls'))}"
            ". Speed-up = ncps ms / liquidjax ms; ✓/✗ against "
            "the issue-4 target. On a loaded machine torch's thread pool degrades far more than "
            "XLA's, so the median ratio overstates the speed-up; the ratio of minima (the "
            "quietest moments of each) is the conservative figure.\n\n" + table(payload["results"]))
    _common.update_benchmarks_md("vs_ncps", body)

if __name__ == "__main__":
    main()
