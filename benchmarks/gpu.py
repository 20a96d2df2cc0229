"""Training throughput on an accelerator (or the CPU with ``--quick``): CIFAR-10-shaped batches.

Synthetic CIFAR-10-shaped data (row-wise: 32 steps × 96 features, 10 classes; random values, the
shape is what matters for speed), LTC-64 (fully connected, 6 unfolds; dense synapse kernel), LTC
over ``AutoNCP(64, 10)`` (sparse synapse kernel) and CfC-64 (backbone 128) with a linear readout on
the last output, cross-entropy, Adam — one ``eqx.filter_jit`` train step per batch. On pixel
sequences (784 steps × 1 channel, Fashion-MNIST-shaped; ``--pixel-steps``): Liquid-S4 as the
``liquid_s4_pixels`` recipe builds it (4 blocks of width 128, SSM size 64, liquid order 2, mean
pooling; trained in convolution mode, with its parameter groups) beside the sequential CfC-64
(``cfc_pixels``) on the same pixels. For each model and batch size it

* checks the train step gives a finite loss that goes down over a few steps on a fixed batch,
* times train steps (warm-up, median, ``jax.block_until_ready``) → examples/s,
* projects the time for one 50 000-image epoch (50 000 / examples-per-s; data loading excluded),
* and, if ``torch`` + ``ncps`` import, times ncps on the same device (CUDA if available) the same
  way (``torch.cuda.synchronize``).

Writes JSON to ``--out`` (default ``$OUT/gpu_bench.json`` when ``$OUT`` is set, else
``benchmarks/results/gpu[_quick].json``) and prints a table.

    python benchmarks/gpu.py                 # on the GPU machine, a few minutes
    python benchmarks/gpu.py --quick         # CPU smoke test (small batches, few repeats)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

STEPS, FEATURES, UNITS, CLASSES, EPOCH = 32, 96, 64, 10, 50_000
NCP_OUTPUTS = 10
# LTC dense, LTC AutoNCP(64, 10) sparse, CfC on rows; Liquid-S4 and CfC on pixel sequences
MODELS = ("ltc", "ltc_ncp", "cfc", "liquid_s4", "cfc_pixels")
PIXEL_MODELS = ("liquid_s4", "cfc_pixels")
PIXEL_STEPS = 784  # Fashion-MNIST read pixel by pixel


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU smoke test: small batches")
    p.add_argument("--batch", type=int, action="append",
                   help="batch size(s) (default: 128, 512, 2048 on GPU; 32 with --quick)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--model", action="append", choices=MODELS,
                   help="model(s) to time (default: all of " + ", ".join(MODELS) + ")")
    p.add_argument("--no-ncps", action="store_true")
    p.add_argument("--pixel-steps", type=int, default=None,
                   help=f"sequence length of the pixel models (default {PIXEL_STEPS}; 64 with "
                   "--quick)")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def build_pixels(kind, key):
    """Liquid-S4 (the ``liquid_s4_pixels`` recipe's model) or CfC-64 on one-channel pixels,
    built from a ``ModelConfig`` as the command line builds them; with its optimiser."""
    import optax

    from liquidjax.models import ModelConfig, build_model, ssm_param_groups
    from liquidjax.recipes import RECIPES

    if kind == "liquid_s4":
        fields = {k: v for k, v in RECIPES["liquid_s4_pixels"].settings.items()
                  if k in ModelConfig.__dataclass_fields__}
        config = ModelConfig(input_size=1, num_classes=CLASSES, **fields)
        return build_model(config, key=key), ssm_param_groups(4e-3, ssm_learning_rate=1e-3,
                                                              weight_decay=0.05)
    config = ModelConfig(input_size=1, num_classes=CLASSES, cell="cfc", units=UNITS,
                         backbone_units=128)
    return build_model(config, key=key), optax.adam(1e-3)


def build(kind, key):
    import equinox as eqx
    import jax

    from liquidjax.cells import LTC
    from liquidjax.cells._cfc import CfC
    from liquidjax.layers import LiquidRNN
    from liquidjax.wirings import AutoNCP

    k1, k2 = jax.random.split(key)
    if kind == "ltc":
        cell = LTC(FEATURES, UNITS, key=k1)
    elif kind == "ltc_ncp":
        cell = LTC(FEATURES, AutoNCP(UNITS, NCP_OUTPUTS), key=k1)
    else:
        cell = CfC(FEATURES, UNITS, backbone_units=128, key=k1)

    class Classifier(eqx.Module):
        rnn: LiquidRNN
        head: eqx.nn.Linear

        def __call__(self, x):
            return self.head(self.rnn(x)[0])

    return Classifier(LiquidRNN(cell, return_sequences=False),
                      eqx.nn.Linear(cell.output_size, CLASSES, key=k2))


def bench_jax(kind, batch, warmup, repeats, pixel_steps=PIXEL_STEPS):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    if kind in PIXEL_MODELS:
        model, opt = build_pixels(kind, jax.random.key(0))
    else:
        model, opt = build(kind, jax.random.key(0)), optax.adam(1e-3)

    def loss_fn(m, x, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(x), y))

    @eqx.filter_jit(donate="all-except-first")
    def train_step(x, m, o, y):
        loss, g = eqx.filter_value_and_grad(loss_fn)(m, x, y)
        upd, o = opt.update(g, o, eqx.filter(m, eqx.is_inexact_array))
        return eqx.apply_updates(m, upd), o, loss

    rng = np.random.default_rng(0)
    # uint8 images normalised like the real pipeline, then read row by row.
    imgs = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    shape = (batch, pixel_steps, 1) if kind in PIXEL_MODELS else (batch, STEPS, FEATURES)
    flat = imgs.reshape(batch, -1)[:, :shape[1] * shape[2]].reshape(shape)
    x = jax.device_put((flat.astype(np.float32) / 255 - 0.5) / 0.25)
    y = jax.device_put(rng.integers(0, CLASSES, batch).astype(np.int32))
    o = opt.init(eqx.filter(model, eqx.is_inexact_array))
    t0 = time.perf_counter()
    model, o, loss0 = train_step(x, model, o, y)
    loss0 = float(loss0)
    compile_s = time.perf_counter() - t0
    losses = [loss0]
    for _ in range(4):
        model, o, loss = train_step(x, model, o, y)
        losses.append(float(loss))
    if not all(np.isfinite(losses)) or not losses[-1] < losses[0]:
        raise SystemExit(f"{kind} B={batch}: losses on a fixed batch did not go down: {losses}")
    st = [model, o]

    def step():
        m, oo, loss = train_step(x, st[0], st[1], y)
        jax.block_until_ready(loss)
        st[0], st[1] = m, oo

    t = _common.time_fn(step, warmup=warmup, repeats=repeats)
    eps = batch / (t["median_ms"] / 1e3)
    from liquidjax.cells import LTC

    cell = model.layers[0].cell if kind in PIXEL_MODELS else model.rnn.cell
    kernel = cell.synapse_kernel if isinstance(cell, LTC) else "-"
    nparams = sum(a.size for a in jax.tree_util.tree_leaves(eqx.filter(model,
                                                                        eqx.is_inexact_array)))
    return {"framework": "liquidjax", "kind": kind, "synapses": kernel, "batch": batch,
            "steps": shape[1], "params": int(nparams), "step_ms": t["median_ms"],
            "examples_per_s": eps, "epoch_50k_s": EPOCH / eps, "compile_s": compile_s,
            "loss_first_last": [losses[0], losses[-1]]}


def bench_ncps(kind, batch, warmup, repeats):
    import numpy as np
    import torch
    from ncps.torch import LTC as TLTC, CfC as TCfC
    from ncps.wirings import AutoNCP

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if kind == "ltc":
        rnn, out = TLTC(FEATURES, UNITS, return_sequences=False), UNITS
    elif kind == "ltc_ncp":
        rnn = TLTC(FEATURES, AutoNCP(UNITS, NCP_OUTPUTS), return_sequences=False)
        out = NCP_OUTPUTS
    else:
        rnn = TCfC(FEATURES, UNITS, return_sequences=False, backbone_units=128,
                   backbone_layers=1)
        out = UNITS
    model = torch.nn.ModuleDict({"rnn": rnn, "fc": torch.nn.Linear(out, CLASSES)}).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, STEPS, FEATURES)).astype(np.float32)).to(dev)
    y = torch.from_numpy(rng.integers(0, CLASSES, batch)).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        out, _ = model["rnn"](x)
        loss = torch.nn.functional.cross_entropy(model["fc"](out), y)
        loss.backward()
        opt.step()
        sync()

    t = _common.time_fn(step, warmup=warmup, repeats=repeats)
    eps = batch / (t["median_ms"] / 1e3)
    return {"framework": f"ncps ({dev.type})", "kind": kind, "batch": batch,
            "step_ms": t["median_ms"], "examples_per_s": eps, "epoch_50k_s": EPOCH / eps}


def main(argv=None):
    args = parse_args(argv)
    import jax

    dev = jax.devices()[0]
    batches = args.batch or ([32] if args.quick else [128, 512, 2048])
    warmup, repeats = (1, 3) if args.quick else (3, args.repeats or 20)
    if args.repeats:
        repeats = args.repeats
    info = _common.machine_info()
    try:
        info["gpu"] = dev.device_kind
    except Exception:  # noqa: BLE001
        pass
    print(f"device: {dev} ({getattr(dev, 'device_kind', '?')}); {_common.machine_line(info)}",
          flush=True)
    if dev.platform == "cpu" and not args.quick:
        print("note: no accelerator found; this is a CPU run (use --quick for a smoke test)")
    rows = []
    models = args.model or list(MODELS)
    pixel_steps = args.pixel_steps or (64 if args.quick else PIXEL_STEPS)
    for kind in models:
        for b in batches:
            r = bench_jax(kind, b, warmup, repeats, pixel_steps)
            rows.append(r)
            print(f"  liquidjax {kind} B={b:5d} T={r['steps']}: {r['step_ms']:8.2f} ms/step, "
                  f"{r['examples_per_s']:10.0f} ex/s, 50k epoch {r['epoch_50k_s']:7.2f} s, "
                  f"compile {r['compile_s']:.1f} s", flush=True)
    if not args.no_ncps:
        try:
            import ncps.torch  # noqa: F401
            import torch  # noqa: F401
        except ImportError as e:
            print(f"ncps not importable ({e}); skipping the ncps comparison")
        else:
            nb = batches[:1] if args.quick else batches[:2]
            for kind in models:
                if kind in PIXEL_MODELS:  # no ncps counterpart
                    continue
                for b in nb:
                    try:
                        r = bench_ncps(kind, b, min(warmup, 2), max(3, repeats // 4))
                    except Exception as e:  # noqa: BLE001 - e.g. CUDA OOM
                        print(f"  ncps {kind} B={b}: FAILED {type(e).__name__}: {e}")
                        continue
                    rows.append(r)
                    print(f"  {r['framework']} {kind} B={b:5d}: {r['step_ms']:8.2f} ms/step, "
                          f"{r['examples_per_s']:10.0f} ex/s, 50k epoch "
                          f"{r['epoch_50k_s']:7.2f} s", flush=True)
    def model_name(r):
        kernel = r.get("synapses", "-")
        return r["kind"].upper() + ("" if kernel == "-" else f" ({kernel})")

    print("\n" + _common.md_table(
        ["framework", "model", "steps", "batch", "ms/step", "examples/s", "50k-image epoch s"],
        [[r["framework"], model_name(r), r.get("steps", STEPS), r["batch"], f"{r['step_ms']:.2f}",
          f"{r['examples_per_s']:.0f}", f"{r['epoch_50k_s']:.2f}"] for r in rows]))
    if args.out is not None:
        out = args.out
    elif os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu_bench.json"
    else:
        out = _common.RESULTS / f"gpu{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(dev), "machine": info, "rows": rows}, indent=2,
                              default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
