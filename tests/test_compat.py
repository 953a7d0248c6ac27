"""Compatibility from configs and shapes alone, before anything is merged."""

import pytest

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.method.compat import (
    COMMON,
    EMBED,
    HEAD,
    ModelInfo,
    check_compatible,
    check_raw_compatible,
    slice_layers,
)

CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 16,
}


def info(label, rows=32, tied=True, head_rows=None, **config):
    shapes = {EMBED: (rows, 8), "model.layers.0.mlp.up_proj.weight": (16, 8), "model.norm.weight": (8,)}
    if not tied:
        shapes[HEAD] = (head_rows or rows, 8)
    return ModelInfo(label, dict(CONFIG, tie_word_embeddings=tied, **config), shapes)


def test_identical_shapes_need_nothing_special():
    report = check_compatible(info("T"), [info("G"), info("S")])
    assert not report.vocab_rows and not report.dropped_heads and report.notes() == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("hidden_size", 16),
        ("num_hidden_layers", 2),
        ("model_type", "llama"),
        ("intermediate_size", 32),
        ("num_key_value_heads", 2),
    ],
)
def test_structure_mismatch_names_model_and_field(key, value):
    with pytest.raises(RecipeError, match=f"model S: {key} is {value}, but the target T has"):
        check_compatible(info("T"), [info("G"), info("S", **{key: value})])


def test_architecture_mismatch():
    with pytest.raises(RecipeError, match="model G: architecture LlamaForCausalLM differs"):
        check_compatible(info("T"), [info("G", architectures=["LlamaForCausalLM"]), info("S")])


def test_shape_mismatch_names_model_and_tensor():
    bad = info("S")
    shapes = dict(bad.shapes, **{"model.layers.0.mlp.up_proj.weight": (17, 8)})
    with pytest.raises(RecipeError, match=r"model S: tensor model.layers.0.mlp.up_proj.weight has shape \[17, 8\]"):
        check_compatible(info("T"), [info("G"), ModelInfo("S", bad.config, shapes)])


def test_missing_tensor_names_model_and_tensor():
    bad = info("G")
    shapes = {k: v for k, v in bad.shapes.items() if k != "model.norm.weight"}
    with pytest.raises(RecipeError, match="model G: tensor model.norm.weight is missing"):
        check_compatible(info("T"), [ModelInfo("G", bad.config, shapes), info("S")])


def test_resized_vocabulary_uses_the_shared_rows():
    report = check_compatible(info("T", rows=40), [info("G", rows=32), info("S", rows=36)])
    assert report.vocab_rows == {EMBED: (40, 32)}
    assert "32 shared rows" in report.notes()[0] and "other 8" in report.notes()[0]


def test_vocabulary_width_is_not_a_vocabulary_difference():
    bad = info("S")
    shapes = dict(bad.shapes, **{EMBED: (32, 9)})
    with pytest.raises(RecipeError, match="has shape"):
        check_compatible(info("T"), [info("G"), ModelInfo("S", bad.config, shapes)])


def test_tied_target_with_untied_donors_drops_their_heads():
    report = check_compatible(info("T"), [info("G", tied=False), info("S", tied=False)])
    assert report.dropped_heads == ["G", "S"]
    assert "output stays tied" in report.notes()[-1]


def test_untied_target_takes_tied_donors_embeddings_as_their_head():
    report = check_compatible(info("T", tied=False), [info("G"), info("S")])
    assert not report.dropped_heads and not report.vocab_rows


def test_untied_target_with_resized_head():
    report = check_compatible(info("T", tied=False, rows=40), [info("G", tied=False, rows=32), info("S", tied=False)])
    assert report.vocab_rows == {EMBED: (40, 32), HEAD: (40, 32)}


def test_untied_donor_without_a_head_is_an_error():
    tied = info("G")
    donor = ModelInfo("G", dict(tied.config, tie_word_embeddings=False), tied.shapes)
    with pytest.raises(RecipeError, match="model G: tensor lm_head.weight is missing"):
        check_compatible(info("T", tied=False), [donor, info("S")])


def deeper(label, layers, width=16):
    """A model of `layers` layers whose layer tensors are `width` wide."""
    base = info(label, num_hidden_layers=layers)
    shapes = {k: v for k, v in base.shapes.items() if ".layers." not in k}
    shapes.update({f"model.layers.{i}.mlp.up_proj.weight": (width, 8) for i in range(layers)})
    return ModelInfo(label, base.config, shapes)


def test_slices_say_which_layers_meet_so_depths_may_differ():
    layers = slice_layers("T", [("T", (0, 1)), ("G", (2, 3)), ("S", (2, 3))], {"T": 1, "G": 4, "S": 4})
    assert layers == {"G": {0: 2}, "S": {0: 2}}
    check_compatible(info("T"), [deeper("G", 4), deeper("S", 4)], layers=layers)
    with pytest.raises(RecipeError, match="model G: num_hidden_layers is 4, but the target T has 1"):
        check_compatible(info("T"), [deeper("G", 4), deeper("S", 4)])  # `models:`: every layer meets its own
    with pytest.raises(RecipeError, match=r"model G: tensor model.layers.2.mlp.up_proj.weight has shape \[17, 8\]"):
        check_compatible(info("T"), [deeper("G", 4, width=17), deeper("S", 4)], layers=layers)
    with pytest.raises(RecipeError, match="model G: tensor model.layers.5.mlp.up_proj.weight is missing"):
        check_compatible(info("T"), [deeper("G", 4), deeper("S", 4)], layers={"G": {0: 5}, "S": {0: 2}})


def test_slice_ranges_must_span_the_targets_layers():
    with pytest.raises(RecipeError, match=r"model G: layer_range \[0, 2\] spans 2 layers, but the target's \[0, 1\]"):
        slice_layers("T", [("T", (0, 1)), ("G", (0, 2))], {"T": 1, "G": 4})
    with pytest.raises(RecipeError, match="model G: num_hidden_layers is 2, but the target T has 1"):
        slice_layers("T", [("T", (0, 1)), ("G", (0, 2))], {"T": 1, "G": 2})  # whole models: say it as depth


def test_common_layers_when_the_recipe_does_not_say():
    check_compatible(info("T"), [deeper("G", 4), deeper("S", 4)], layers=COMMON)
    with pytest.raises(RecipeError, match="has shape"):
        check_compatible(info("T"), [deeper("G", 4, width=17), deeper("S", 4)], layers=COMMON)


def test_single_files_compare_the_tensors_they_share():
    files = {"a": (2, 3), "b": (4,)}
    check_raw_compatible(ModelInfo("T", {}, files), [ModelInfo("G", {}, {"a": (2, 3)}), ModelInfo("S", {}, files)])
    with pytest.raises(RecipeError, match=r"model S: tensor b has shape \[5\], but the target's has \[4\]"):
        check_raw_compatible(ModelInfo("T", {}, files), [ModelInfo("S", {}, {"b": (5,)})])


def test_architecture_line_says_allow_crimes_does_not_change_it():
    with pytest.raises(RecipeError, match="one architecture only, with or without --allow-crimes"):
        check_compatible(info("T"), [info("G", architectures=["LlamaForCausalLM"])])
