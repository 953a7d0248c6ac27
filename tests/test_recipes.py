"""The shipped recipes: parsed by mergekit, run end to end on stand-ins."""

import pytest
import yaml

from conftest import RECIPES
from helpers import read_tensors
from mergekit_runs import run_stock
from mergekit_reasoning.recipe import parse_recipe, retarget
from mergekit_reasoning.reference import bound_ratio
from mergekit_reasoning.standins import write_trio

SHIPPED = sorted(p.name for p in RECIPES.glob("*.yml"))


def test_all_four_recipes_are_shipped():
    assert SHIPPED == ["qwen1.5b_add.yml", "qwen1.5b_sub.yml", "qwen7b_add.yml", "qwen7b_sub.yml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_is_valid_mergekit_configuration(name):
    data = yaml.safe_load((RECIPES / name).read_text())
    config = parse_recipe(data, source=name)
    assert config.merge_method == "reasoning_vector"
    assert str(config.base_model).startswith("Qwen/Qwen2.5-")
    assert sorted(m.parameters["role"] for m in config.models) == ["grpo", "sft"]
    assert config.dtype and config.out_dtype
    assert (config.parameters["lambda"] > 0) == name.endswith("_add.yml")
    assert "Provenance" in (RECIPES / name).read_text()


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_runs_on_stand_ins(name, trio, untied_trio, tmp_path):
    models = trio if name.startswith("qwen1.5b") else untied_trio  # 7B is untied
    data = yaml.safe_load((RECIPES / name).read_text())
    recipe = retarget(data, str(models["target"]), {"grpo": str(models["grpo"]), "sft": str(models["sft"])})
    out = run_stock(recipe, tmp_path / "out")
    lam = data["parameters"]["lambda"]
    merged, t, g, s = (read_tensors(p) for p in (out, models["target"], models["grpo"], models["sft"]))
    assert set(merged) == set(t)
    for key, value in merged.items():
        assert bound_ratio(value, t[key], [(g[key], s[key], lam)]) <= 1.0, key


def test_add_recipe_on_qwen2_5_1_5b_shapes(tmp_path):
    """Real hidden size, MLP width and 151936 vocabulary rows; one layer instead of 28."""
    models = write_trio(tmp_path / "models", shape="qwen2.5-1.5b", num_layers=1)
    data = yaml.safe_load((RECIPES / "qwen1.5b_add.yml").read_text())
    recipe = retarget(data, str(models["target"]), {"grpo": str(models["grpo"]), "sft": str(models["sft"])})
    out = run_stock(recipe, tmp_path / "out")
    merged = read_tensors(out)
    assert merged["model.embed_tokens.weight"].shape == (151936, 1536)
    assert merged["model.layers.0.mlp.up_proj.weight"].shape == (8960, 1536)
    assert "lm_head.weight" not in merged
    t, g, s = (read_tensors(models[r]) for r in ("target", "grpo", "sft"))
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight", "model.norm.weight"):
        assert bound_ratio(merged[key], t[key], [(g[key], s[key], 1.0)]) <= 1.0, key
