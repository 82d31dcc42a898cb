"""Recipes: every shipped recipe loads; validation names the field; --set overrides."""

from __future__ import annotations

import pytest

from tuner.config import METHOD_ARGS, RECIPES_DIR, load_recipe

SHIPPED = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def test_one_recipe_per_method():
    assert set(SHIPPED) == set(METHOD_ARGS)


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_loads(name):
    r = load_recipe(RECIPES_DIR / f"{name}.yaml")
    assert r.method == name and r.name == name
    assert isinstance(r.method_args, METHOD_ARGS[name])
    assert r.to_dict()["method"] == name


def test_overrides_dotted_and_bare():
    r = load_recipe("lora", ["lr=1e-3", "r=4", "target_modules=q_proj,v_proj", "data.k=5", "train.packing=false"])
    assert r.train.lr == 1e-3 and r.method_args.r == 4 and r.data.k == 5
    assert r.method_args.target_modules == ["q_proj", "v_proj"] and r.train.packing is False
    assert load_recipe("lora", ["packing=prefix"]).train.packing == "prefix"


def test_switching_method_resets_its_args():
    r = load_recipe("lora", ["method=ia3", "packing=false"])
    assert r.method == "ia3" and r.method_args.target_modules


@pytest.mark.parametrize("override, needle", [
    (["r=0"], "LoraArgs.r"),
    (["train.schedule=step"], "TrainConfig.schedule"),
    (["lr=abc"], "TrainConfig.lr"),
    (["data.p_gold=1.5"], "DataConfig.p_gold"),
    (["data.format=qa"], "DataConfig.format"),
    (["nosuch=1"], "nosuch"),
    (["method=prompt-tuning"], "packing"),
    (["packing=maybe"], "TrainConfig.packing"),
    (["method=qlora", "quant_type=int8"], "QLoraArgs.quant_type"),
])
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ValueError, match=needle):
        load_recipe("lora", override)


def test_unknown_recipe_lists_shipped():
    with pytest.raises(FileNotFoundError, match="lora"):
        load_recipe("nope-not-a-recipe")
