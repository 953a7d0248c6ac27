"""mergekit's generic callers: the in-memory API with no roles, as mergekit's own tests call
every registered method; models, unlike tensors, must always say their role."""

import pytest
import torch
from conftest import recipe_dict
from helpers import bits
from mergekit_runs import run_stock

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.executor.recipe import Recipe
from mergekit_reasoning.testing.reference import bound_ratio


def strided_inputs(count=3):
    """mergekit's own per-method regression test: transposed, hence strided, float32 inputs."""
    generator = torch.Generator().manual_seed(42)
    tensors = [torch.randn(4, 6, generator=generator).T for _ in range(count)]
    assert not any(t.is_contiguous() for t in tensors)
    return tensors


def merge(tensors, method="reasoning_vector", **parameters):
    from mergekit.merge_methods import merge_state_dicts

    return merge_state_dicts([{"w": t} for t in tensors], method, base=0, parameters=parameters)["w"]


def test_generic_call_reads_inputs_as_base_grpo_sft():
    tensors = strided_inputs()
    copies = [t.clone() for t in tensors]
    ours = merge(tensors)  # only generic parameters, as mergekit's test passes them (none apply)
    assert torch.equal(bits(ours), bits(merge([t.contiguous() for t in tensors])))
    for tensor, before in zip(tensors, copies):
        assert torch.equal(bits(tensor), bits(before))  # inputs untouched
    target, grpo, sft = tensors
    assert bound_ratio(ours, target, [(grpo, sft, 1.0)]) <= 1.0
    theirs = merge(tensors, "task_arithmetic", weight=[1.0, -1.0], normalize=False)
    # stock task_arithmetic rounds (grpo − target) and (sft − target) apart: within a few
    # float32 steps of the inputs' magnitude, as is ours
    exact = target.double() + (grpo.double() - sft.double())
    scale = (target.double().abs() + grpo.double().abs() + sft.double().abs()) * torch.finfo(torch.float32).eps
    assert ((theirs.double() - exact).abs() <= 4 * scale).all()
    assert ((ours.double() - theirs.double()).abs() <= 4 * scale).all()


def test_generic_call_takes_roles_and_lambda_when_given():
    target, a, b = strided_inputs()
    # `role` is bound for every input, the base (which takes none) included
    ours = merge([target, a, b], role=[None, "sft", "grpo"], **{"lambda": -0.5})
    assert bound_ratio(ours, target, [(b, a, -0.5)]) <= 1.0


def test_generic_call_without_roles_needs_exactly_two_donors():
    with pytest.raises(RecipeError, match="reads its inputs as base, GRPO, SFT, so it needs two besides the base"):
        merge(strided_inputs(2))


def test_a_model_without_a_role_is_refused_before_anything_is_written(trio, tmp_path):
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"])
    del recipe["models"][1]["parameters"]["role"]
    line = f"model {trio['sft']} has no role: give it `role: grpo` or `role: sft`"
    with pytest.raises(RecipeError) as stock:
        run_stock(recipe, tmp_path / "out")
    assert str(stock.value).startswith(line)
    assert not (tmp_path / "out").exists()
    with pytest.raises(RecipeError, match=line.replace("`", ".")):
        Recipe.from_data(recipe).check()
