"""The compatibility check is cached under the identity of the models' files, not their
paths: a model changed on disk between two merges in one process is read and checked again."""

import json

import pytest
from conftest import recipe_dict
from helpers import read_tensors
from mergekit_runs import run_stock

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.executor.recipe import Recipe
from mergekit_reasoning.testing.reference import bound_ratio
from mergekit_reasoning.testing.standins import write_standin


def assert_merged_from(out, target, grpo, sft):
    merged, t, g, s = (read_tensors(p) for p in (out, target, grpo, sft))
    for name, value in merged.items():
        assert bound_ratio(value, t[name], [(g[name], s[name], 1.0)]) <= 1.0, name


def test_a_donor_changed_on_disk_is_checked_again(trio, make_model, tmp_path):
    donor = make_model("changing", like_seed=3)  # one path, rewritten below
    recipe = recipe_dict(trio["target"], donor, trio["sft"])
    assert_merged_from(run_stock(recipe, tmp_path / "first"), trio["target"], donor, trio["sft"])

    config = json.loads((donor / "config.json").read_text())
    (donor / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=3)))  # same size, new content
    line = f"model {donor}: num_hidden_layers is 3, but the target {trio['target']} has 2"
    for check in (lambda: run_stock(recipe, tmp_path / "second"), lambda: Recipe.from_data(recipe).check()):
        with pytest.raises(RecipeError, match=line):
            check()

    write_standin(donor, seed=0, like_seed=3, vocab_rows=480)  # new weights: a resized vocabulary
    with pytest.raises(RecipeError, match="vocabulary rows differ.*mergekit-reasoning merge"):
        run_stock(recipe, tmp_path / "third")

    write_standin(donor, seed=0, like_seed=5)  # fits again, with other values: merged from those
    assert_merged_from(run_stock(recipe, tmp_path / "fourth"), trio["target"], donor, trio["sft"])
