"""Conv stem speed: the fused channels-last stem against the same stem written with equinox's
channels-first modules (`eqx.nn.Conv2d` → `eqx.nn.GroupNorm` → ReLU, `reduce_window` max pool).

    python benchmarks/conv_stem.py [--batch 64] [--repeats 7]

Prints forward+backward milliseconds of the stem alone and of the whole conv + CfC classifier
(the Fashion-MNIST recipe's shapes), for both implementations, and their ratio. Both run in the
same process, interleaved, so load on a shared machine affects them alike.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from liquidjax.models import ConvLiquidClassifier, ModelConfig, build_model


def _reference_feature_map(self, x, key):
    h, w, c = self.image_shape
    z = jnp.transpose(jnp.reshape(x, (h, w, c)), (2, 0, 1))
    for (conv, norm), pool in zip(self.stem, self.pool_after):
        z = jax.nn.relu(norm(conv(z)))
        if pool:
            z = jax.lax.reduce_window(z, -jnp.inf, jax.lax.max, (1, 2, 2), (1, 2, 2), "VALID")
    return jnp.transpose(z, (1, 2, 0))  # the (H, W, C) layout `features` reads


class _ReferenceStem(ConvLiquidClassifier):
    def _feature_map(self, x, key):
        return _reference_feature_map(self, x, key)


def _grad_fn(part: str):
    @eqx.filter_jit
    def g(model, x, y):
        def loss(m):
            if part == "stem":
                return jnp.mean(jax.vmap(lambda a: m.features(a))(x) ** 2)
            logits = jax.vmap(m)(x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
        return eqx.filter_value_and_grad(loss)(model)
    return g


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, 28, 28)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), batch {args.batch}, "
          f"{args.repeats} repeats, min ms")
    print("| stem | part | equinox modules ms | fused channels-last ms | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for stem, channels in (("strided", (32, 64, 128)), ("pooled", (32, 64))):
        cfg = ModelConfig(kind="conv", image_shape=(28, 28, 1), input_size=28, num_classes=10,
                          conv_channels=channels, conv_stem=stem, units=64)
        fused = build_model(cfg, key=jax.random.key(0))
        ref = _ReferenceStem(fused.stem, fused.body, fused.image_shape, sequence=fused.sequence,
                             pool_after=fused.pool_after)
        for part in ("stem", "model"):
            g = _grad_fn(part)
            a, b = g(ref, x, y), g(fused, x, y)
            np.testing.assert_allclose(a[0], b[0], rtol=1e-4)
            times = {"ref": [], "fused": []}
            for _ in range(args.repeats):
                for name, m in (("ref", ref), ("fused", fused)):
                    t = time.perf_counter()
                    jax.block_until_ready(g(m, x, y))
                    times[name].append(time.perf_counter() - t)
            r, f = 1e3 * min(times["ref"]), 1e3 * min(times["fused"])
            print(f"| {stem} {'-'.join(map(str, channels))} | {part} | {r:.1f} | {f:.1f} | "
                  f"{r / f:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
