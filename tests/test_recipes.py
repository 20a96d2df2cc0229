"""Recipes are data shared by the CLI and the benchmarks: each one parses into valid configs,
explicit flags win, and the image default is the best row-wise recipe."""

import pytest

from liquidjax import cli
from liquidjax._config_args import config_values
from liquidjax.models import ModelConfig
from liquidjax.recipes import DEFAULT_IMAGE_RECIPE, RECIPES, get_recipe


def _parse(argv):
    return cli._with_recipe(cli.build_parser().parse_args(argv), argv)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_parses_to_a_valid_config(name):
    args = _parse(["train", "--dataset", "fashion_mnist", "--recipe", name])
    assert args.recipe == f"{name}@{RECIPES[name].version}"
    for dest, value in RECIPES[name].settings.items():
        assert getattr(args, dest) == value, dest
    values = config_values(args, ModelConfig)
    values.update(input_size=28, num_classes=10, image_shape=(28, 28, 1), task="classification",
                  target_size=1)
    ModelConfig(**values)  # raises on an invalid combination


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
