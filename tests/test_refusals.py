"""Every refusal is one true line naming the culprit, and says what would work; what
`task_arithmetic` accepts (deeper donors under `slices:`) the method accepts too."""

import json
import shutil

import pytest
import torch
from conftest import recipe_dict
from helpers import assert_bitwise_equal, read_tensors
from mergekit_runs import mergekit_yaml, run_stock

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.executor import run
from mergekit_reasoning.executor.recipe import Recipe
from mergekit_reasoning.method.compat import layer_of
from mergekit_reasoning.testing.reference import bound_ratio, ulp


def refused_alike(recipe: dict, tmp_path, line: str, **options) -> None:
    """Both executors refuse `recipe` with exactly `line`, before writing anything."""
    with pytest.raises(RecipeError) as stock:
        run_stock(recipe, tmp_path / "stock", **options)
    assert str(stock.value) == line
    assert not (tmp_path / "stock").exists()
    with pytest.raises(RecipeError) as ours:
        Recipe.from_data(recipe).check()
    assert str(ours.value) == line


def test_target_listed_as_the_sft_donor_says_so_and_what_would_work(trio, tmp_path):
    t, g = trio["target"], trio["grpo"]
    recipe = recipe_dict(t, g, t, 0.5)  # the target also listed, as the SFT donor
    line = (
        f"model {t} is the target (base_model) and is also listed as the sft donor, which reasoning_vector "
        f"cannot do (it keeps the target apart from its donors); {t} + λ·(GRPO − {t}) is task_arithmetic "
        f"with the GRPO model at weight λ, base_model {t} and normalize: false"
    )
    refused_alike(recipe, tmp_path, line)
    done = mergekit_yaml(recipe, tmp_path, tmp_path / "cli")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"Error: {line}"

    # what the line offers does what it says: target + λ·(GRPO − target)
    suggested = {
        "merge_method": "task_arithmetic",
        "base_model": str(t),
        "models": [{"model": str(g), "parameters": {"weight": 0.5}}],
        "parameters": {"normalize": False},
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    merged, target, grpo = (read_tensors(p) for p in (run_stock(suggested, tmp_path / "ta"), t, g))
    for name, value in merged.items():
        exact = target[name].double() + 0.5 * (grpo[name].double() - target[name].double())
        assert ((value.double() - exact).abs() <= ulp(exact, torch.bfloat16)).all(), name


def other_architecture(model, out):
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    config.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_mixed_architectures_are_refused_even_with_allow_crimes(trio, tmp_path):
    llama = other_architecture(trio["sft"], tmp_path / "llama")
    line = (
        f"model {llama}: architecture LlamaForCausalLM differs from the target's Qwen2ForCausalLM; "
        "reasoning_vector merges models of one architecture only, with or without --allow-crimes"
    )
    refused_alike(recipe_dict(trio["target"], trio["grpo"], llama), tmp_path, line, allow_crimes=True)
    # task_arithmetic does merge them with --allow-crimes: the method refuses, and says so, not silently
    theirs = {
        "merge_method": "task_arithmetic",
        "base_model": str(trio["target"]),
        "models": [
            {"model": str(trio["grpo"]), "parameters": {"weight": 1.0}},
            {"model": str(llama), "parameters": {"weight": -1.0}},
        ],
        "parameters": {"normalize": False},
    }
    assert (run_stock(theirs, tmp_path / "ta", allow_crimes=True) / "config.json").exists()


@pytest.fixture(scope="module")
def deep(make_model):
    """GRPO and SFT stand-ins twice as deep as the tiny target (4 layers, not 2)."""
    return {
        "grpo": make_model("deep-grpo", num_layers=4, like_seed=3),
        "sft": make_model("deep-sft", num_layers=4, like_seed=2),
    }


def sliced(method, target, deep, donor_range, lam=0.5):
    params = {"grpo": {"role": "grpo"}, "sft": {"role": "sft"}}
    if method == "task_arithmetic":
        params = {"grpo": {"weight": lam}, "sft": {"weight": -lam}}
    sources = [{"model": str(target), "layer_range": [0, 2]}] + [
        {"model": str(deep[role]), "layer_range": list(donor_range), "parameters": params[role]}
        for role in ("grpo", "sft")
    ]
    return {
        "merge_method": method,
        "base_model": str(target),
        "slices": [{"sources": sources}],
        "parameters": {"lambda": lam} if method == "reasoning_vector" else {"normalize": False},
        "dtype": "bfloat16" if method == "reasoning_vector" else "float32",
        "out_dtype": "bfloat16",
    }


@pytest.mark.parametrize("donor_range", [(0, 2), (2, 4)])
def test_deeper_donors_under_slices_merge_like_task_arithmetic(trio, deep, tmp_path, donor_range):
    ours = read_tensors(run_stock(sliced("reasoning_vector", trio["target"], deep, donor_range), tmp_path / "ours"))
    target, grpo, sft = read_tensors(trio["target"]), read_tensors(deep["grpo"]), read_tensors(deep["sft"])
    assert set(ours) == set(target)
    for name, value in ours.items():
        layer = layer_of(name)
        source = name
        if layer is not None:  # output layer i comes from the donors' layer first + i
            index, prefix, rest = layer
            source = f"{prefix}.{donor_range[0] + index}.{rest}"
        assert bound_ratio(value, target[name], [(grpo[source], sft[source], 0.5)]) <= 1.0, name
    theirs = read_tensors(run_stock(sliced("task_arithmetic", trio["target"], deep, donor_range), tmp_path / "theirs"))
    for name in ours:
        a, b = ours[name].double(), theirs[name].double()
        assert ((a - b).abs() <= ulp(b, torch.bfloat16)).all(), name
    (streamed,) = run.merge(
        Recipe.from_data(sliced("reasoning_vector", trio["target"], deep, donor_range)), [tmp_path / "s"]
    )
    assert_bitwise_equal(read_tensors(streamed), ours)


def test_depths_that_cannot_meet_name_the_model_and_the_layers(trio, deep, tmp_path):
    recipe = sliced("reasoning_vector", trio["target"], deep, (0, 3))
    line = f"model {deep['grpo']}: layer_range [0, 3] spans 3 layers, but the target's [0, 2] in the same slice spans 2"
    refused_alike(recipe, tmp_path / "slices", line)
    # `models:` merges every layer with the same layer of the others: depths must agree
    line = f"model {deep['grpo']}: num_hidden_layers is 4, but the target {trio['target']} has 2"
    refused_alike(recipe_dict(trio["target"], deep["grpo"], deep["sft"]), tmp_path / "models", line)
