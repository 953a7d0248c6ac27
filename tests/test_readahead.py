"""Read-ahead advice: only local shards, never past the byte budget."""

import yaml

from mergekit_reasoning.executor.readahead import advise, recipe_model_dirs


def test_advises_local_shards_within_budget(trio, tmp_path):
    size = (trio["target"] / "model.safetensors").stat().st_size
    assert advise([str(trio["target"]), str(trio["sft"])], budget_bytes=10**12) == 2 * size
    assert advise([str(trio["target"]), str(trio["sft"])], budget_bytes=size + 5) == size + 5
    assert advise(["Qwen/Qwen2.5-1.5B-Instruct"], budget_bytes=10**12) == 0


def test_reads_model_folders_from_the_recipe(tmp_path):
    recipe = tmp_path / "r.yml"
    recipe.write_text(yaml.safe_dump({"base_model": "/m/t", "models": [{"model": "/m/g"}, {"model": "org/x@abc"}]}))
    assert recipe_model_dirs(recipe) == ["/m/t", "/m/g", "org/x"]
    recipe.write_text("not: [valid")
    assert recipe_model_dirs(recipe) == []
