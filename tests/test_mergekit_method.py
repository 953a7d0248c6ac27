"""`reasoning_vector` inside stock mergekit: exactness, parity, parameters, heads."""

import json

import pytest
import torch
from conftest import recipe_dict
from helpers import bits, read_tensors
from mergekit_runs import mergekit_yaml, run_stock

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.testing.reference import bound_ratio, ulp

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


def assert_matches_reference(out, target, grpo, sft, lam_for=lambda name: 1.0, head_source=None):
    merged, t, g, s = (read_tensors(p) for p in (out, target, grpo, sft))
    assert set(merged) == set(t)
    for name, value in merged.items():
        source = head_source if (name == HEAD and head_source) else name
        vectors = [(g[source], s[source], lam_for(name))]
        assert bound_ratio(value, t[name], vectors) <= 1.0, name


@pytest.mark.parametrize("lam", [1.0, -1.0, 0.35])
def test_matches_float64_reference(trio, tmp_path, lam):
    out = run_stock(recipe_dict(trio["target"], trio["grpo"], trio["sft"], lam), tmp_path / "out")
    assert_matches_reference(out, trio["target"], trio["grpo"], trio["sft"], lambda _: lam)


def test_lambda_zero_returns_the_target_bit_for_bit(trio, tmp_path):
    out = run_stock(recipe_dict(trio["target"], trio["grpo"], trio["sft"], 0.0), tmp_path / "out")
    merged, target = read_tensors(out), read_tensors(trio["target"])
    assert set(merged) == set(target)
    for name in target:
        assert torch.equal(bits(merged[name]), bits(target[name])), name


def test_agrees_with_stock_task_arithmetic(trio, tmp_path):
    lam = 0.8
    ours = read_tensors(run_stock(recipe_dict(trio["target"], trio["grpo"], trio["sft"], lam), tmp_path / "ours"))
    task_arithmetic = {
        "merge_method": "task_arithmetic",
        "base_model": str(trio["target"]),
        "models": [
            {"model": str(trio["grpo"]), "parameters": {"weight": lam}},
            {"model": str(trio["sft"]), "parameters": {"weight": -lam}},
        ],
        "parameters": {"normalize": False},
        "dtype": "float32",  # stock arithmetic happens in the load dtype
        "out_dtype": "bfloat16",
    }
    theirs = read_tensors(run_stock(task_arithmetic, tmp_path / "theirs"))
    assert set(ours) == set(theirs)
    equal = total = 0
    for name in ours:
        a, b = ours[name].double(), theirs[name].double()
        # Same value up to float32 rounding order: never more than one bf16 step apart.
        assert ((a - b).abs() <= ulp(b, torch.bfloat16)).all(), name
        equal += int((a == b).sum())
        total += a.numel()
    assert equal / total > 0.99


def test_filters_and_gradients_resolve_per_tensor(trio, tmp_path):
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"])
    recipe["parameters"]["lambda"] = [{"filter": "mlp", "value": 0.5}, {"value": [0.0, 1.0]}]
    out = run_stock(recipe, tmp_path / "out")

    def expected(name):
        if "mlp" in name:
            return 0.5
        if name.startswith("model.layers."):
            return float(name.split(".")[2])  # two layers: t = 0 and t = 1
        return 0.0  # embeddings and final norm are planned at t = 0

    assert_matches_reference(out, trio["target"], trio["grpo"], trio["sft"], expected)
    merged, target = read_tensors(out), read_tensors(trio["target"])
    assert torch.equal(bits(merged[EMBED]), bits(target[EMBED]))  # λ = 0 there
    assert not torch.equal(
        merged["model.layers.1.self_attn.q_proj.weight"], target["model.layers.1.self_attn.q_proj.weight"]
    )


def test_per_model_lambda_and_two_vectors(trio, make_model, tmp_path):
    grpo2, sft2 = make_model("grpo2", like_seed=11), make_model("sft2", like_seed=12)
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"])
    recipe["models"] += [
        {"model": str(grpo2), "parameters": {"role": "grpo", "vector": "code", "lambda": -0.5}},
        {"model": str(sft2), "parameters": {"role": "sft", "vector": "code", "lambda": -0.5}},
    ]
    out = run_stock(recipe, tmp_path / "out")
    merged, t, g, s, g2, s2 = (read_tensors(p) for p in (out, trio["target"], trio["grpo"], trio["sft"], grpo2, sft2))
    for name, value in merged.items():
        vectors = [(g[name], s[name], 1.0), (g2[name], s2[name], -0.5)]
        assert bound_ratio(value, t[name], vectors) <= 1.0, name


def test_tied_target_gives_tied_output_without_lm_head(trio, tmp_path):
    out = run_stock(recipe_dict(trio["target"], trio["grpo"], trio["sft"]), tmp_path / "out")
    assert HEAD not in read_tensors(out)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True


def test_untied_models_merge_their_heads(untied_trio, tmp_path):
    t = untied_trio
    out = run_stock(recipe_dict(t["target"], t["grpo"], t["sft"]), tmp_path / "out")
    assert HEAD in read_tensors(out)
    assert_matches_reference(out, t["target"], t["grpo"], t["sft"])


def test_untied_target_with_tied_donors_takes_their_embeddings_as_head(untied_trio, trio, tmp_path):
    out = run_stock(recipe_dict(untied_trio["target"], trio["grpo"], trio["sft"]), tmp_path / "out")
    assert_matches_reference(out, untied_trio["target"], trio["grpo"], trio["sft"], head_source=EMBED)


def test_stock_executor_refuses_what_only_ours_can_do(trio, untied_trio, make_model, tmp_path):
    with pytest.raises(RecipeError, match="output stays tied.*mergekit-reasoning merge"):
        run_stock(recipe_dict(trio["target"], untied_trio["grpo"], untied_trio["sft"]), tmp_path / "a")
    resized = make_model("resized", vocab_rows=480)
    with pytest.raises(RecipeError, match="vocabulary rows differ.*mergekit-reasoning merge"):
        run_stock(recipe_dict(trio["target"], resized, trio["sft"]), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_stock_cli_runs_the_method(trio, tmp_path):
    done = mergekit_yaml(recipe_dict(trio["target"], trio["grpo"], trio["sft"], 0.5), tmp_path, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert_matches_reference(tmp_path / "out", trio["target"], trio["grpo"], trio["sft"], lambda _: 0.5)
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_stock_cli_reports_incompatible_models_in_one_line(trio, make_model, tmp_path):
    wide = make_model("wide", shape="tiny", like_seed=None)
    config = json.loads((wide / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (wide / "config.json").write_text(json.dumps(config))
    done = mergekit_yaml(recipe_dict(trio["target"], wide, trio["sft"]), tmp_path, tmp_path / "out")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: model {wide}: num_hidden_layers is 3, but the target {trio['target']} has 2"
    )
    assert not (tmp_path / "out" / "config.json").exists()
