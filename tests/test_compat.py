"""Compatibility from configs and shapes alone, before anything is merged."""

import pytest

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.method.compat import EMBED, HEAD, ModelInfo, check_compatible

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
