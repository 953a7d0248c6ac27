"""A vector folder's model card (README.md): read back with huggingface_hub's own parser, offline."""

import json
import re
import shutil

import pytest
import yaml
from click.testing import CliRunner
from conftest import recipe_dict
from helpers import assert_bitwise_equal, read_tensors
from huggingface_hub import ModelCard, ModelCardData
from mergekit_runs import run_stock

from mergekit_reasoning.cli import main
from mergekit_reasoning.vectors.card import card_text, hub_id
from mergekit_reasoning.vectors.files import Sparsify, densify, extract


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEKIT_REASONING_CACHE", str(tmp_path / "hash-cache"))


def _card(folder):
    return ModelCard.load(folder / "README.md")


def _block(text, language):
    return re.search(rf"```{language}\n(.*?)```", text, re.S).group(1)


def test_extract_writes_a_card_the_hub_library_reads(trio, tmp_path):
    manifest = extract(trio["grpo"], trio["sft"], tmp_path / "vector")
    card = _card(tmp_path / "vector")
    data = card.data.to_dict()
    assert data["library_name"] == "mergekit"
    assert {"mergekit", "reasoning-vector"} <= set(data["tags"])
    assert data["license"] == "unknown"  # the stand-ins state none
    assert "base_model" not in data  # local folders have no hub id: the body says so
    assert "are local folders" in card.text
    # The metadata survives a round trip through the hub library's own types.
    assert ModelCardData(**data).to_dict() == data
    assert ModelCard(card.content).data.to_dict() == data
    assert card.content.startswith("---\n") and "\n---\n" in card.content
    # Its body: the command that wrote it, the shard hashes from the manifest, sparsity and norm.
    assert f"mergekit-reasoning extract --grpo {trio['grpo']} --sft {trio['sft']} vector --dtype float32" in card.text
    for name, digest in manifest["shards"].items():
        assert f"| `{name}` | `{digest}` |" in card.text
    assert "Sparsity: none, every entry kept" in card.text
    assert f"Norm ‖v‖ = {manifest['total_norm']:.6g}" in card.text
    assert "| layer 0 | 12 |" in card.text and "| layer 1 | 12 |" in card.text


def test_the_recipe_in_the_card_applies_the_vector(trio, tmp_path):
    """Its YAML, with TARGET filled in and run from beside the folder, gives the pair's merge bit for bit."""
    extract(trio["grpo"], trio["sft"], tmp_path / "vector")
    recipe = yaml.safe_load(_block(_card(tmp_path / "vector").text, "yaml"))
    assert recipe["models"][0] == {"model": "./vector", "parameters": {"role": "vector"}}
    recipe["base_model"] = str(trio["target"])
    recipe["models"][0]["model"] = str(tmp_path / "vector")
    via_card = read_tensors(run_stock(recipe, tmp_path / "via-card"))
    pair = read_tensors(run_stock(recipe_dict(trio["target"], trio["grpo"], trio["sft"], 1.0), tmp_path / "pair"))
    assert_bitwise_equal(via_card, pair)


def test_the_card_is_outside_the_hashes_so_verify_passes_with_it_edited_or_gone(trio, tmp_path):
    extract(trio["grpo"], trio["sft"], tmp_path / "v")
    readme = tmp_path / "v" / "README.md"
    for step in ("as written", "edited", "removed"):
        if step == "edited":
            readme.write_text(readme.read_text() + "\nEvaluated on our data: see below.\n")
        elif step == "removed":
            readme.unlink()
        result = CliRunner().invoke(main, ["verify", str(tmp_path / "v")])
        assert result.exit_code == 0, (step, result.output)
    assert "README.md" not in json.loads((tmp_path / "v" / "reasoning_vector.json").read_text())["shards"]


def _donor(source, folder, license=None, in_config=None):
    shutil.copytree(source, folder)
    if license:
        (folder / "README.md").write_text(f"---\nlicense: {license}\n---\n\n# A donor\n")
    if in_config:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, license=in_config)))
    return folder


@pytest.mark.parametrize(
    "grpo, sft, expected",
    [
        (dict(license="mit"), dict(license="mit"), "mit"),
        (dict(license="apache-2.0"), dict(in_config="apache-2.0"), "apache-2.0"),  # a config's license counts too
        (dict(license="mit"), dict(license="apache-2.0"), "other"),
        (dict(license="mit"), dict(), "unknown"),
    ],
)
def test_license_is_the_donors_where_they_state_one(grpo, sft, expected, trio, tmp_path):
    g = _donor(trio["grpo"], tmp_path / "grpo", **grpo)
    s = _donor(trio["sft"], tmp_path / "sft", **sft)
    manifest = extract(g, s, tmp_path / "v")
    assert _card(tmp_path / "v").data.license == expected
    assert manifest["sources"]["grpo"]["license"] == (grpo.get("license") or grpo.get("in_config"))
    assert manifest["sources"]["sft"]["license"] == (sft.get("license") or sft.get("in_config"))


def test_hub_donors_are_the_base_model_and_the_command_pins_their_revisions(trio, tmp_path):
    manifest = extract(trio["grpo"], trio["sft"], tmp_path / "v")
    rev_g, rev_s = "a" * 40, "b" * 40
    manifest["sources"] = {
        "grpo": {"model": "org/math-grpo", "revision": rev_g, "license": "mit"},
        "sft": {"model": f"org/math-sft@{rev_s}", "revision": rev_s, "license": "mit"},
    }
    card = ModelCard(card_text(manifest, "math-vector"))
    assert card.data.base_model == ["org/math-grpo", "org/math-sft"] and card.data.license == "mit"
    assert f"extract --grpo org/math-grpo@{rev_g} --sft org/math-sft@{rev_s} math-vector" in card.text
    assert "local folder" not in card.text
    # A model read from the Hugging Face cache is its hub id; a plain folder has none.
    assert hub_id(f"/cache/hub/models--org--math-grpo/snapshots/{rev_g}") == "org/math-grpo"
    assert hub_id(str(trio["grpo"])) is None and hub_id("./org/x") is None and hub_id("org/bad--name") is None


def test_sparse_and_densified_folders_say_how_to_apply_them(trio, tmp_path):
    plan = Sparsify("dare", 0.3, seed=5)
    extract(trio["grpo"], trio["sft"], tmp_path / "sparse", dtype="bfloat16", sparsify=plan, storage="sparse")
    sparse = _card(tmp_path / "sparse")
    assert "mergekit-reasoning densify sparse sparse-dense" in sparse.text
    assert yaml.safe_load(_block(sparse.text, "yaml"))["models"][0]["model"] == "./sparse-dense"
    assert "Sparsity: dare at density 0.3, seed 5" in sparse.text
    assert "--sparsify dare --density 0.3 --seed 5 --storage sparse" in sparse.text
    dense = densify(tmp_path / "sparse", tmp_path / "dense")
    card = _card(tmp_path / "dense")
    assert card.data.to_dict() == sparse.data.to_dict()
    assert "stored dense" in card.text and "mergekit-reasoning densify sparse dense" in card.text
    assert yaml.safe_load(_block(card.text, "yaml"))["models"][0]["model"] == "./dense"
    assert all(f"`{digest}`" in card.text for digest in dense["shards"].values())
