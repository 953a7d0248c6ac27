"""The model card of a merge states the target, the GRPO and SFT donors and λ, from both
executors; other methods' cards stay mergekit's own, byte for byte."""

import yaml
from conftest import recipe_dict
from mergekit_runs import run_stock

from mergekit_reasoning.executor import run
from mergekit_reasoning.executor.recipe import Recipe


def section(*lines: str) -> str:
    return "\n".join(["### Reasoning vector", "", *lines]) + "\n"


def test_card_states_target_donors_and_lambda_from_both_executors(trio, tmp_path):
    t, g, s = trio["target"], trio["grpo"], trio["sft"]
    recipe = recipe_dict(t, g, s, 0.5)
    expected = section(
        "θ_out = θ_target + λ·(θ_GRPO − θ_SFT), with:",
        "",
        f"* target: `{t}`",
        f"* GRPO donor: `{g}`",
        f"* SFT donor: `{s}`",
        "* λ: 0.5",
    )
    stock = run_stock(recipe, tmp_path / "stock")
    (ours,) = run.merge(Recipe.from_data(recipe), [tmp_path / "ours"])
    for out in (stock, ours):
        card = (out / "README.md").read_text()
        assert expected + "\n### Models Merged" in card, card
        assert "merged using the [Reasoning vector" in card  # mergekit's own text stays


def wrapped_card():
    """mergekit's generate_card as it is once the method has planned a merge (which installs
    the section; in a fresh process nothing may have planned one yet)."""
    import mergekit.card

    from mergekit_reasoning.method import merge_card

    merge_card.install()
    return mergekit.card.generate_card


def test_card_of_several_vectors_and_a_per_tensor_lambda(trio, make_model):
    from mergekit.config import MergeConfiguration

    generate_card = wrapped_card()

    grpo2, sft2 = make_model("card-grpo2", like_seed=11), make_model("card-sft2", like_seed=12)
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"])
    recipe["parameters"]["lambda"] = [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]
    recipe["models"] += [
        {"model": str(grpo2), "parameters": {"role": "grpo", "vector": "code", "lambda": -0.5}},
        {"model": str(sft2), "parameters": {"role": "sft", "vector": "code", "lambda": -0.5}},
    ]
    card = generate_card(MergeConfiguration.model_validate(recipe), yaml.safe_dump(recipe), "n")
    assert (
        section(
            "θ_out = θ_target + λ·(θ_GRPO − θ_SFT), summed over the vectors below:",
            "",
            f"* target: `{trio['target']}`",
            f"* GRPO donor of vector `reasoning`: `{trio['grpo']}`",
            f"* SFT donor of vector `reasoning`: `{trio['sft']}`",
            "* λ of vector `reasoning`: set per tensor by the configuration's `lambda` (filters or a per-layer "
            "gradient, below)",
            f"* GRPO donor of vector `code`: `{grpo2}`",
            f"* SFT donor of vector `code`: `{sft2}`",
            "* λ of vector `code`: -0.5",
        )
        in card
    )


def test_other_methods_cards_are_mergekits_own(trio):
    import mergekit.merge
    from mergekit.config import MergeConfiguration

    wrapped = wrapped_card()
    assert mergekit.merge.generate_card is wrapped and wrapped.__wrapped__ is not wrapped
    for method, parameters in (("task_arithmetic", {"weight": 1.0}), ("linear", {"weight": 0.5}), ("ties", {})):
        config = MergeConfiguration.model_validate(
            {
                "merge_method": method,
                "base_model": str(trio["target"]),
                "models": [{"model": str(trio["grpo"]), "parameters": parameters}],
            }
        )
        assert wrapped(config, "yaml: here", "name") == wrapped.__wrapped__(config, "yaml: here", "name")
