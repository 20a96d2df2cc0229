"""Ensembles (`ModelConfig(ensemble=K)`, `--ensemble K`): members built from independent keys,
the combined prediction against NumPy, each member trained exactly as it would be alone (the
ensemble's steps against separate single-model steps), checkpoints, and the clear refusals."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from liquidjax.models import Ensemble, ModelConfig, build_model
from liquidjax.train import (
    ArrayData,
    TrainConfig,
    TrainState,
    clip_by_member_norm,
    evaluate,
    fit,
    make_optimizer,
    split_gaussian,
    train_step,
)


def _arrays(tree):
    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))


def _config(**kw):
    base = dict(input_size=3, num_classes=4, units=6, backbone_units=8, mixed_memory=True)
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return {"x": jnp.asarray(rng.normal(size=(5, 7, 3)), jnp.float32),
            "timespans": jnp.asarray(rng.uniform(0.5, 1.5, size=(5, 7)), jnp.float32),
            "mask": jnp.asarray(rng.uniform(size=(5, 7)) > 0.2),
            "y": jnp.asarray(rng.integers(0, 4, size=5), jnp.int32)}


@pytest.mark.parametrize("cell", ["cfc", "ltc"])
def test_members_are_the_models_of_independent_keys(cell, batch):
    config = _config(cell=cell, ensemble=3)
    ens = build_model(config, key=jax.random.key(1))
    assert isinstance(ens, Ensemble) and ens.size == 3
    keys = jax.random.split(jax.random.key(1), 3)
    single = _config(cell=cell)
    for i in range(3):
        alone = build_model(single, key=keys[i])
        for a, b in zip(_arrays(ens.member(i)), _arrays(alone), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    differ = [not np.allclose(a, b) for a, b in zip(_arrays(ens.member(0)),
                                                     _arrays(ens.member(1)))]
    assert sum(differ) >= len(differ) // 2  # independent initialisations (some start constant)
    assert type(build_model(single, key=keys[0])).__name__ == "SequenceClassifier"


def test_classification_combines_mean_probabilities(batch):
    ens = build_model(_config(ensemble=3), key=jax.random.key(2))
    x, ts, mask = batch["x"][0], batch["timespans"][0], batch["mask"][0]
    probs = np.stack([np.asarray(jax.nn.softmax(ens.member(i)(x, ts, mask))) for i in range(3)])
    out = np.asarray(ens(x, ts, mask))
    np.testing.assert_allclose(np.exp(out), probs.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.exp(out).sum(), 1.0, rtol=1e-6)


def test_regression_combines_the_mixture_moments():
    rng = np.random.default_rng(3)
    config = ModelConfig(input_size=2, num_classes=0, task="regression", target_size=2,
                         predict_variance=True, units=4, backbone_units=6, ensemble=4)
    ens = build_model(config, key=jax.random.key(0))
    outs = jnp.asarray(rng.normal(size=(4, 4)) * 2, jnp.float32)  # (members, [mu | v])
    mean, var = (np.asarray(a, np.float64) for a in split_gaussian(ens.combine(outs)))
    mu, v = (np.asarray(a, np.float64) for a in split_gaussian(outs))
    np.testing.assert_allclose(mean, mu.mean(0), rtol=1e-6)
    # The law of total variance of an equal-weight mixture of Gaussians.
    np.testing.assert_allclose(var, v.mean(0) + mu.var(0), rtol=1e-4)
    plain = ModelConfig(input_size=2, num_classes=0, task="regression", target_size=2,
                        units=4, backbone_units=6, ensemble=3)
    ens = build_model(plain, key=jax.random.key(0))
    np.testing.assert_allclose(ens.combine(outs[:3, :2]), np.mean(outs[:3, :2], 0), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_member_trains_as_it_would_alone(dtype, batch):
    """Three steps of a 2-member ensemble = three steps of each member alone (same batches,
    clipping active, Adam); the members' fast paths run batched inside the ensemble."""
    with jax.enable_x64(dtype == "float64"):
        cast = (lambda t: jax.tree_util.tree_map(
            lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, t))
        ens = cast(build_model(_config(ensemble=2), key=jax.random.key(4)))
        b = cast(dict(batch))
        b["y"] = batch["y"]
        config = TrainConfig(learning_rate=1e-2, clip_norm=0.05, epochs=1, batch_size=5)
        opt_e = make_optimizer(config, 3, members=True)
        opt_1 = make_optimizer(config, 3)
        state = TrainState.create(ens, opt_e, jax.random.key(0))
        singles = [TrainState.create(ens.member(i), opt_1, jax.random.key(0)) for i in range(2)]
        for _ in range(3):
            state = train_step(state, opt_e, b)
            singles = [train_step(s, opt_1, b) for s in singles]
        tol = dict(rtol=2e-4, atol=2e-6) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
        moved = 0.0
        for i, s in enumerate(singles):
            for a, c, a0 in zip(_arrays(state.model.member(i)), _arrays(s.model),
                                _arrays(ens.member(i)), strict=True):
                np.testing.assert_allclose(a, c, **tol)
                moved = max(moved, float(np.max(np.abs(np.asarray(c) - np.asarray(a0)))))
        assert moved > 1e-3  # the steps did change the parameters
        # The recorded loss is the members' mean.
        np.testing.assert_allclose(state.loss_sum, np.mean([s.loss_sum for s in singles]),
                                   rtol=1e-5)


def test_clip_by_member_norm_scales_each_member_alone():
    grads = {"a": jnp.array([[3.0, 4.0], [0.3, 0.4]]), "b": jnp.array([[0.0], [0.0]])}
    clipped, _ = clip_by_member_norm(1.0).update(grads, optax.EmptyState())
    np.testing.assert_allclose(clipped["a"], [[0.6, 0.8], [0.3, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [[0.0], [0.0]])


def test_fit_evaluate_and_checkpoint(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 6, 2)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(np.int32)
    config = ModelConfig(input_size=2, num_classes=2, units=6, backbone_units=8, ensemble=3)
    model = build_model(config, key=jax.random.key(0))
    tc = TrainConfig(epochs=8, batch_size=16, learning_rate=2e-2)
    result = fit(model, ArrayData(x, y), tc, out_dir=tmp_path, model_config=config.to_dict(),
                 progress="none")
    metrics = evaluate(result.model, ArrayData(x, y), batch_size=16)
    assert metrics["accuracy"] >= 0.8
    # The evaluation is the ensemble's vote, not one member's.
    logits = jax.vmap(result.model)(jnp.asarray(x))
    members = np.stack([np.asarray(jax.nn.softmax(jax.vmap(result.model.member(i))(x)))
                        for i in range(3)])
    np.testing.assert_allclose(np.exp(logits), members.mean(0), rtol=1e-5, atol=1e-6)
    assert metrics["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == y))
    # A checkpoint restores into the skeleton build_model makes from the stored config.
    from liquidjax.train import latest_checkpoint, restore_model

    restored, _ = restore_model(latest_checkpoint(tmp_path / "checkpoints"),
                                build_model(config, key=jax.random.key(9)))
    for a, b in zip(_arrays(restored), _arrays(result.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_refusals():
    with pytest.raises(ValueError, match="ensemble"):
        _config(ensemble=0)
    ens = build_model(_config(ensemble=2), key=jax.random.key(0))
    with pytest.raises(IndexError, match="member 2 of an ensemble of 2"):
        ens.member(2)
    from liquidjax.export import stepper

    with pytest.raises(ValueError, match=r"Ensemble of 2 members .*model\.member\(i\)"):
        stepper(ens)
    with pytest.raises(ValueError, match="leading"):
        Ensemble(build_model(_config(), key=jax.random.key(0)))


def test_cli_regression_archive_with_variance_and_ensemble(tmp_path, capsys):
    """`--predict-variance` on a regression archive (refused before the data was read, when the
    flags were checked against a classification placeholder) and `--ensemble 2`: trains,
    evaluates from the checkpoint, and a classification archive with `--predict-variance` gets
    one clear line."""
    from liquidjax.cli import main
    from liquidjax.train import list_checkpoints, read_header

    rng = np.random.default_rng(7)
    for problem, target in (("Reg", "@targetLabel true"), ("Cls", "@classLabel true a b")):
        lines = [f"@problemName {problem}", "@univariate true", "@equalLength true", target,
                 "@data"]
        for split, n in (("TRAIN", 16), ("TEST", 8)):
            rows = []
            for i in range(n):
                v = rng.normal(size=6)
                label = f"{v.mean():.4f}" if problem == "Reg" else "ab"[i % 2]
                rows.append(",".join(f"{a:.3f}" for a in v) + ":" + label)
            (tmp_path / f"{problem}_{split}.ts").write_text("\n".join(lines + rows) + "\n")
    common = ["--data-dir", str(tmp_path), "--epochs", "2", "--units", "4",
              "--backbone-units", "4", "--progress", "none", "--cpu-devices", "1",
              "--predict-variance", "--ensemble", "2"]
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ts", "--name", "Reg", "--out-dir", str(out),
                 *common]) == 0
    assert "test rmse" in capsys.readouterr().out
    config = read_header(list_checkpoints(out / "checkpoints")[-1])["model_config"]
    assert (config["task"], config["predict_variance"], config["ensemble"]) == (
        "regression", True, 2)
    assert main(["evaluate", str(out), "--batch-size", "8"]) == 0
    assert "rmse" in capsys.readouterr().out
    assert main(["train", "--dataset", "ts", "--name", "Cls", "--out-dir",
                 str(tmp_path / "cls"), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("predict_variance applies to task='regression' only")


def test_per_step_outputs_are_zero_on_masked_steps(batch):
    """Per-step outputs of an ensemble, per example and through the trainer's batched path:
    the members' mean probability on valid steps, zero on masked ones (as a single model's)."""
    from liquidjax.train._step import _forward

    ens = build_model(_config(per_step=True, ensemble=2), key=jax.random.key(6))
    out = np.asarray(_forward(ens, batch, None))  # (batch, time, classes)
    mask = np.asarray(batch["mask"])
    assert out.shape == (5, 7, 4) and np.all(out[~mask] == 0)
    probs = np.mean([np.asarray(jax.nn.softmax(jax.vmap(ens.member(i))(
        batch["x"], batch["timespans"], batch["mask"]))) for i in range(2)], axis=0)
    np.testing.assert_allclose(np.exp(out[mask]), probs[mask], rtol=1e-5, atol=1e-7)
    one = np.asarray(ens(batch["x"][0], batch["timespans"][0], batch["mask"][0]))
    np.testing.assert_allclose(one, out[0], rtol=1e-5, atol=1e-6)
