"""Recipes are data shared by the CLI and the benchmarks: each one parses into valid configs,
explicit flags win, and the image default is the best row-wise recipe."""

import pytest

from liquidjax import cli
from liquidjax._config_args import config_values
from liquidjax.models import ModelConfig
from liquidjax.recipes import DEFAULT_IMAGE_RECIPE, RECIPES, get_recipe


def _parse(argv):
    return cli.with_recipe(cli.build_parser().parse_args(argv), argv)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_parses_to_a_valid_config(name):
    args = _parse(["train", "--dataset", "fashion_mnist", "--recipe", name])
    assert args.recipe == f"{name}@{RECIPES[name].version}"
    for dest, value in RECIPES[name].settings.items():
        assert getattr(args, dest) == value, dest
    values = config_values(args, ModelConfig)
    values.update(input_size=28, num_classes=10, image_shape=(28, 28, 1), task="classification",
                  target_size=1, rocket_length=28 if values["rocket_features"] else None)
    ModelConfig(**values)  # raises on an invalid combination (the data gives rocket_length)


def test_defaults_and_overrides():
    args = _parse(["train"])  # the main job: CIFAR-10 rows
    assert args.recipe == RECIPES[DEFAULT_IMAGE_RECIPE].tag
    assert args.cell == "cfc" and args.units == 128 and args.mixed_memory and args.epochs == 15
    args = _parse(["train", "--units", "32", "--epochs", "2"])
    assert args.units == 32 and args.epochs == 2 and args.mixed_memory  # flags win
    args = _parse(["train", "--dataset", "two_spirals"])  # not images: plain defaults
    assert args.recipe == "none" and args.units == 64 and not args.mixed_memory
    args = _parse(["train", "--recipe", "none"])
    assert args.recipe == "none" and args.units == 64
    with pytest.raises(ValueError, match="unknown recipe 'x'"):
        get_recipe("x")
    with pytest.raises(TypeError):
        RECIPES["cfc_rows"].settings["units"] = 1  # recipes are immutable data


def test_ltc_slow_init_remembers_across_timespans():
    import jax
    import jax.numpy as jnp
    import numpy as np

    import liquidjax as lj

    x = jax.random.normal(jax.random.key(9), (28,))

    def kept(cell):  # state fraction surviving one unit timespan at rest (fused unfolds)
        _, den, cm = cell.conductances(0.0, jnp.zeros(cell.state_size), x)
        cm_t = cm * cell.ode_unfolds
        return float(jnp.mean((cm_t / (cm_t + den)) ** cell.ode_unfolds))

    ncps = lj.LTC(28, 64, key=jax.random.key(0))
    assert kept(ncps) < 0.01  # ncps's ranges: memoryless across a timespan
    for constraints in (True, False):
        slow = lj.LTC(28, 64, key=jax.random.key(0), init="slow",
                      implicit_param_constraints=constraints)
        assert kept(slow) > 0.9
        p = slow.effective_params()
        np.testing.assert_allclose(p.cm, 8.0, rtol=1e-5)
        np.testing.assert_allclose(p.gleak, 0.1, rtol=1e-4)
        assert float(p.w.sum(1).max()) <= 1.0 + 1e-5  # total recurrent weight per neuron <= 1
    wired = lj.LTC(28, lj.AutoNCP(32, 4), key=jax.random.key(1), init="slow")
    fan_in = np.count_nonzero(np.asarray(wired.mask.array), axis=0)
    w = np.asarray(wired.effective_params().w)  # [post, pre], zero off the wiring
    assert np.all(w.sum(1)[fan_in > 0] <= 1.0 + 1e-5)
    with pytest.raises(ValueError, match="init must be one of"):
        lj.LTC(3, 4, key=jax.random.key(0), init="xavier")
    cfg = ModelConfig(input_size=3, num_classes=2, cell="ltc")
    assert cfg.ltc_init == "slow"  # new models remember; ncps's ranges stay available


def test_fast_recipe_is_a_budget_whose_schedule_ends_with_it():
    # cfc_rows_fast trades model size for time: a smaller model than cfc_rows, and its
    # warm-up + cosine schedule spans exactly its own epochs (it decays to zero at the end of
    # the budget instead of being cut off at a high learning rate).
    import equinox as eqx
    import jax

    from liquidjax import train as lt
    from liquidjax.models import build_model

    fast, full = RECIPES["cfc_rows_fast"].settings, RECIPES["cfc_rows"].settings
    assert fast["epochs"] < full["epochs"] and fast["units"] < full["units"]

    def params(name):
        args = _parse(["train", "--dataset", "fashion_mnist", "--recipe", name])
        values = config_values(args, ModelConfig)
        values.update(input_size=28, num_classes=10, image_shape=(28, 28, 1),
                      task="classification", target_size=1)
        model = build_model(ModelConfig(**values), key=jax.random.key(0))
        leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
        return args, sum(x.size for x in leaves)

    args, n_fast = params("cfc_rows_fast")
    _, n_full = params("cfc_rows")
    assert args.cpu_devices == 1  # a recipe setting that is not a model or training field
    assert n_fast < 0.6 * n_full
    steps = 54_000 // args.batch_size  # Fashion-MNIST training split after the 10 % hold-out
    config = lt.TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, label_smoothing=args.label_smoothing)
    schedule = lt.make_schedule(config, config.epochs * steps)
    lrs = [float(schedule(s)) for s in range(0, config.epochs * steps + 1)]
    assert max(lrs) == pytest.approx(fast["learning_rate"], rel=1e-3) and lrs[-1] == 0.0
    assert float(schedule(config.epochs * steps - steps)) > 0.0  # still learning in the last epoch
