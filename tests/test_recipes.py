"""The shipped recipes: parsed by mergekit, run end to end on stand-ins."""

import pytest
import yaml
from conftest import RECIPES
from helpers import read_tensors
from mergekit_runs import run_stock

from mergekit_reasoning.core.formats import load_tensor, tensor_files
from mergekit_reasoning.executor.recipe import Recipe
from mergekit_reasoning.testing.reference import bound_ratio
from mergekit_reasoning.testing.standins import retarget

SHIPPED = sorted(p.name for p in RECIPES.glob("*.yml"))
# The target each recipe's name stands for (recipes/README.md), without its revision.
TARGETS = {
    "qwen1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen1.5b_math": "Qwen/Qwen2.5-Math-1.5B",
    "qwen7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen7b_metamath": "Qwen/Qwen2.5-7B-Instruct",
    "qwen7b_math": "Qwen/Qwen2.5-Math-7B",
    "r1distill1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "olmo2_7b": "allenai/OLMo-2-1124-7B",
}


def test_every_catalogue_recipe_is_shipped():
    """The four original files keep their names; every pair of issue 17's catalogue adds and subtracts."""
    assert {"qwen1.5b_add.yml", "qwen1.5b_sub.yml", "qwen7b_add.yml", "qwen7b_sub.yml"} <= set(SHIPPED)
    assert SHIPPED == sorted(f"{stem}_{sign}.yml" for stem in TARGETS for sign in ("add", "sub"))


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_is_valid_mergekit_configuration(name):
    data = yaml.safe_load((RECIPES / name).read_text())
    config = Recipe.from_data(data, source=name).config()
    assert config.merge_method == "reasoning_vector"
    assert config.base_model.model.path == TARGETS[name.rsplit("_", 1)[0]]
    assert sorted(m.parameters["role"] for m in config.models) == ["grpo", "sft"]
    assert config.dtype and config.out_dtype
    assert (config.parameters["lambda"] > 0) == name.endswith("_add.yml")
    assert "Provenance" in (RECIPES / name).read_text()


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_runs_on_stand_ins(name, trio, untied_trio, tmp_path):
    models = trio if name.startswith("qwen1.5b") else untied_trio  # Qwen2.5-(Math-)1.5B ties; 7B does not
    data = yaml.safe_load((RECIPES / name).read_text())
    recipe = retarget(data, str(models["target"]), {"grpo": str(models["grpo"]), "sft": str(models["sft"])})
    out = run_stock(recipe, tmp_path / "out")
    lam = data["parameters"]["lambda"]
    merged, t, g, s = (read_tensors(p) for p in (out, models["target"], models["grpo"], models["sft"]))
    assert set(merged) == set(t)
    for key, value in merged.items():
        assert bound_ratio(value, t[key], [(g[key], s[key], lam)]) <= 1.0, key


def test_add_recipe_on_qwen2_5_1_5b_shapes(qwen_trio, tmp_path):
    """Real hidden size, MLP width and 151936 vocabulary rows; one layer instead of 28."""
    models = qwen_trio
    data = yaml.safe_load((RECIPES / "qwen1.5b_add.yml").read_text())
    recipe = retarget(data, str(models["target"]), {"grpo": str(models["grpo"]), "sft": str(models["sft"])})
    # Small output shards: mergekit's writer holds a whole shard in memory until it is full.
    out = run_stock(recipe, tmp_path / "out", out_shard_size=2**27)
    merged = tensor_files(out)
    assert "lm_head.weight" not in merged and set(merged) == set(tensor_files(models["target"]))
    inputs = [tensor_files(models[r]) for r in ("target", "grpo", "sft")]
    # Tensor by tensor, so memory holds one tensor of each model and a few float64 blocks.
    for key in (
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.norm.weight",
    ):
        value = load_tensor(merged[key], key)
        t, g, s = (load_tensor(files[key], key) for files in inputs)
        assert value.shape == t.shape == {"model.embed_tokens.weight": (151936, 1536)}.get(key, t.shape)
        assert bound_ratio(value, t, [(g, s, 1.0)]) <= 1.0, key
    assert load_tensor(merged["model.layers.0.mlp.up_proj.weight"], "model.layers.0.mlp.up_proj.weight").shape == (
        8960,
        1536,
    )
