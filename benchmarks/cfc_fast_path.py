"""The CfC sequence fast path against the generic scan of ``cell.advance``: train step and forward.

``LiquidRNN`` runs a plain CfC, a CfC with mixed memory and a wired CfC through
``liquidjax/cells/_cfc_sequence.py`` (stacked heads, hoisted input products, a hand-written VJP);
everything else goes through a ``lax.scan`` of ``cell.advance``, which stays the reference. This
script builds each model once, compiles it both ways (the generic way by telling ``LiquidRNN``
that the fast path does not apply), checks that both give the same loss and gradients, and times
them in one process, alternating calls (train step = value-and-grad of a 10-class head's
cross-entropy + Adam, as in ``vs_ncps.py``; forward = the jitted logits), batch 128.

    python benchmarks/cfc_fast_path.py                # all four models, 30 rounds
    python benchmarks/cfc_fast_path.py --quick        # 5 rounds

Prints one Markdown table row per model: ms median (min) of train step / forward, both paths.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (must come before jax: pins the threads)

MODELS = (  # label, kind, steps, inputs, units
    ("CfC-80 + MM, 28 rows × 28", "mm", 28, 28, 80),
    ("CfC-64 + MM, 32 × 96", "mm", 32, 96, 64),
    ("CfC-64, 32 × 96", "cfc", 32, 96, 64),
    ("WiredCfC AutoNCP(64, 10), 32 × 96", "wired", 32, 96, 64),
)


def build(kind: str, inputs: int, units: int, key):
    import equinox as eqx
    import jax

    from liquidjax.cells import CfC, MixedMemory, WiredCfC
    from liquidjax.layers import LiquidRNN
    from liquidjax.wirings import AutoNCP

    class Classifier(eqx.Module):
        rnn: LiquidRNN
        head: eqx.nn.Linear

        def __call__(self, x):
            y, _ = self.rnn(x)
            return self.head(y)

    k1, k2 = jax.random.split(key)
    if kind == "mm":
        cell, out = MixedMemory(CfC(inputs, units, backbone_units=128, key=k1), key=k2), units
    elif kind == "cfc":
        cell, out = CfC(inputs, units, backbone_units=128, key=k1), units
    else:
        cell, out = WiredCfC(inputs, AutoNCP(units, 10), key=k1), 10
    return Classifier(LiquidRNN(cell, return_sequences=False), eqx.nn.Linear(out, 10, key=k2))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5 rounds (development)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 30)")
    p.add_argument("--threads", type=int, default=None, help="cores (default: all)")
    args = p.parse_args(argv)
    threads = _common.pin_threads(args.threads)
    import equinox as eqx
    import jax
    import numpy as np

    from liquidjax.cells import AbstractCell, CfC, MixedMemory, WiredCfC

    rounds = args.rounds or (5 if args.quick else 30)
    # The generic path: the contract's default advance_sequence (scan_advance) in place of the
    # cells' overrides.
    overrides = {cls: cls.advance_sequence for cls in (CfC, MixedMemory, WiredCfC)}

    def take(path):
        for cls, method in overrides.items():
            cls.advance_sequence = AbstractCell.advance_sequence if path == "generic" else method

    print(f"machine: {_common.machine_line(_common.machine_info())}; {threads} threads; "
          f"{rounds} alternating rounds after 3 warm-up calls", flush=True)
    print("| B128 | generic: train / forward ms | fast path: train / forward ms | train gain |")
    print("| --- | --- | --- | --- |")
    for label, kind, steps, inputs, units in MODELS:
        rng = np.random.default_rng(0)
        x = jax.numpy.asarray(rng.standard_normal((128, steps, inputs)), np.float32)
        y = jax.numpy.asarray(rng.integers(0, 10, 128), np.int32)
        fns, grads = {}, {}
        for path in ("generic", "fast"):
            # Tracing happens at the first call: the path is chosen while it runs.
            take(path)
            opt, train_step, forward, loss_and_grad = _common.classifier_fns(1e-3)
            model = build(kind, inputs, units, jax.random.key(0))
            grads[path] = loss_and_grad(model, x, y)
            state = [model, opt.init(eqx.filter(model, eqx.is_inexact_array))]

            def train(state=state, train_step=train_step):
                m, s, loss = train_step(state[0], state[1], x, y)
                jax.block_until_ready(loss)
                state[0], state[1] = m, s

            def fwd(model=model, forward=forward):
                jax.block_until_ready(forward(model, x))

            for _ in range(3):
                train()
                fwd()
            fns[path] = {"train": train, "forward": fwd}
        take("fast")
        for a, b in zip(jax.tree_util.tree_leaves(grads["generic"]),
                        jax.tree_util.tree_leaves(grads["fast"])):
            scale = float(np.abs(np.asarray(a)).max()) + 1e-6
            if float(np.abs(np.asarray(a) - np.asarray(b)).max()) > 1e-4 * scale:
                raise SystemExit(f"{label}: the fast path's loss or gradients differ")
        times = {(p_, w): [] for p_ in fns for w in ("train", "forward")}
        for _ in range(rounds):
            for path, pair in fns.items():
                for what, fn in pair.items():
                    t0 = time.perf_counter()
                    fn()
                    times[(path, what)].append((time.perf_counter() - t0) * 1e3)

        def cell(path):
            return " / ".join(f"{statistics.median(times[(path, w)]):.2f} "
                              f"({min(times[(path, w)]):.2f})" for w in ("train", "forward"))

        gain = (statistics.median(times[("fast", "train")])
                / statistics.median(times[("generic", "train")]) - 1)
        print(f"| {label} | {cell('generic')} | {cell('fast')} | {gain:+.0%} |", flush=True)


if __name__ == "__main__":
    main()
