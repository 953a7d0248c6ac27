"""Every shipped recipe, read offline: mergekit's schema, complete roles, hub ids and pins as the
catalogue gives them, the table in recipes/README.md, and `mergekit-reasoning recipes`."""

import re

import pytest
import yaml
from click.testing import CliRunner

from mergekit_reasoning.cli import main
from mergekit_reasoning.core.shipped import recipes_dir, shipped_recipes

QWEN7B_INSTRUCT = ("Qwen/Qwen2.5-7B-Instruct", "a09a35458c702b33eeacc393d103063234e8bc28")
MICHAELBZHU = (("michaelbzhu/Qwen2.5-Math-1.5B-GSM8K-SFT", None), ("michaelbzhu/Qwen2.5-Math-1.5B-GSM8K-GRPO", None))
# Issue 17's catalogue, as data: recipe stem -> (target, SFT, GRPO), each (hub id, revision or None).
# Revisions are the hub snapshot folders the authors' follow-up (Moe-Zbeeb/Reasoning-Vectors,
# evaluation/mergekit/) merged; None where it pins none.
CATALOGUE = {
    "qwen1.5b": (("Qwen/Qwen2.5-1.5B-Instruct", None), *MICHAELBZHU),
    "qwen1.5b_math": (("Qwen/Qwen2.5-Math-1.5B", None), *MICHAELBZHU),
    "qwen7b": (
        QWEN7B_INSTRUCT,
        ("SII-Enigma/Qwen2.5-7B-Ins-SFT-32k", None),
        ("SII-Enigma/Qwen2.5-7B-Ins-SFT-GRPO", None),
    ),
    "qwen7b_metamath": (
        QWEN7B_INSTRUCT,
        ("chrisluo5311/Qwen2.5-7B-Instruct-SFT-MetaMath-Merged-ROI", "e19091b030b4ab663c09812ae0d72b27ce79c725"),
        ("chrisluo5311/Qwen2.5-7B-Instruct-SFT-GRPO-Merged-ROI", "5cb55d12bf3c948c488cbfff9fcac7f63cc21079"),
    ),
    "qwen7b_math": (
        ("Qwen/Qwen2.5-Math-7B", None),
        ("PrimeIntellect/INTELLECT-MATH-SFT", None),
        ("PrimeIntellect/INTELLECT-MATH", None),
    ),
    "r1distill1.5b": (
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "ad9f0ae0864d7fbcd1cd905e3c6c5b069cc8b562"),
        ("akhauriyash/DeepSeek-R1-Distill-Qwen-1.5B-SpecReasoner_SFT_14k", "bb20ce6b325be4ec0e5693c4359676c1e6761dd7"),
        (
            "akhauriyash/DeepSeek-R1-Distill-Qwen-1.5B-SpecReasoner_SFT_GRPO_14k_v3",
            "a4fa79594eb8b68e3a012a8a4f76aae2f1c9269a",
        ),
    ),
    "olmo2_7b": (
        ("allenai/OLMo-2-1124-7B", "7df9a82518afdecae4e8c026b27adccc8c1f0032"),
        ("allenai/OLMo-2-1124-7B-SFT", "1de02c0175118a9de5854aec80a1f970e701e928"),
        ("sunblaze-ucb/OLMo-2-7B-SFT-GRPO-MATH-1EPOCH", "e53a31fea77a61b1a6e4112043a97baec882d282"),
    ),
}
# The architecture of each pair, as its model family has it; mergekit 0.1.5 must define each.
ARCHITECTURES = {stem: "Olmo2ForCausalLM" if stem.startswith("olmo2") else "Qwen2ForCausalLM" for stem in CATALOGUE}
SHIPPED = sorted(p.name for p in recipes_dir().glob("*.yml"))
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
REVISION = re.compile(r"[0-9a-f]{40}")


def _stem(name):
    return name[: -len(".yml")].rsplit("_", 1)[0]


def _config(name):
    from mergekit.config import MergeConfiguration

    return MergeConfiguration.model_validate(yaml.safe_load((recipes_dir() / name).read_text(encoding="utf-8")))


def test_the_shipped_recipes_are_the_catalogue_added_and_subtracted():
    assert SHIPPED == sorted(f"{stem}_{sign}.yml" for stem in CATALOGUE for sign in ("add", "sub"))


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_parses_with_mergekit_and_its_roles_are_complete(name):
    config = _config(name)
    assert config.merge_method == "reasoning_vector"
    assert config.base_model is not None
    vectors = {}
    for entry in config.models:
        params = entry.parameters or {}
        vectors.setdefault(params.get("vector", "reasoning"), []).append(params.get("role"))
    assert vectors and all(sorted(roles) == ["grpo", "sft"] for roles in vectors.values()), vectors
    lam = config.parameters["lambda"]
    assert lam == (1.0 if name.endswith("_add.yml") else -1.0)
    assert config.dtype == config.out_dtype == "bfloat16"


@pytest.mark.parametrize("name", SHIPPED)
def test_models_are_hub_ids_pinned_exactly_where_the_catalogue_pins_them(name):
    from huggingface_hub.utils import validate_repo_id

    config = _config(name)
    by_role = {entry.parameters["role"]: entry.model.model for entry in config.models}
    found = [config.base_model.model, by_role["sft"], by_role["grpo"]]
    expected = CATALOGUE[_stem(name)]
    for (model_id, revision), path in zip(expected, found):
        assert HUB_ID.fullmatch(path.path), path.path
        validate_repo_id(path.path)  # the hub's own rules (length, '--', '..'), offline
        assert path.path == model_id
        assert path.revision == revision, f"{name}: {model_id}"
        assert path.revision is None or REVISION.fullmatch(path.revision)


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_says_where_its_models_come_from(name):
    text = (recipes_dir() / name).read_text(encoding="utf-8")
    assert "Provenance" in text and "Revisions" in text
    assert "Moe-Zbeeb/Reasoning-Vectors" in text and "delta_alpha1/" in text


def _readme_rows():
    rows = {}
    for line in (recipes_dir() / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and cells[0].endswith(".yml`"):
            rows[cells[0].strip("`")] = cells
    return rows


def test_readme_table_lists_exactly_the_shipped_files_with_their_models():
    rows = _readme_rows()
    assert sorted(rows) == SHIPPED
    for name, cells in rows.items():
        (target, _), (sft, _), (grpo, _) = CATALOGUE[_stem(name)]
        assert cells[1:4] == [target, sft, grpo], name
        pinned = [rev for _, rev in CATALOGUE[_stem(name)] if rev]
        revisions = cells[4] if cells[4] != "as above" else rows[name.replace("_sub", "_add")][4]
        if pinned:
            assert all(f"`{rev}`" in revisions for rev in pinned), name
        else:
            assert revisions == "not pinned", name


def test_mergekit_defines_every_architecture_the_catalogue_needs():
    from mergekit.architecture.json_definitions import NAME_TO_ARCH

    for architecture in set(ARCHITECTURES.values()):
        assert architecture in NAME_TO_ARCH, architecture


def _olmo2_standins(root):
    """A tiny OLMo-2 target, SFT and GRPO: one random initialisation, three small perturbations."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    config = Olmo2Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    folders = {}
    for seed, role in enumerate(("target", "sft", "grpo"), start=1):
        torch.manual_seed(0)
        model = Olmo2ForCausalLM(config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.01 * torch.randn(param.shape, generator=generator))
        model.to(torch.bfloat16).save_pretrained(root / role)
        folders[role] = root / role
    return folders


@pytest.mark.parametrize("name", ["olmo2_7b_add.yml", "olmo2_7b_sub.yml"])
def test_the_olmo2_recipe_merges_olmo2_standins_with_mergekits_own_definition(name, tmp_path):
    from helpers import read_tensors
    from mergekit.architecture import arch_info_for_config
    from mergekit_runs import run_stock
    from transformers import AutoConfig

    from mergekit_reasoning.testing.reference import bound_ratio
    from mergekit_reasoning.testing.standins import retarget

    models = _olmo2_standins(tmp_path / "olmo2")
    arch = arch_info_for_config(AutoConfig.from_pretrained(models["target"]))
    assert arch is not None and arch.expected_model_type == "olmo2"
    data = yaml.safe_load((recipes_dir() / name).read_text(encoding="utf-8"))
    recipe = retarget(data, str(models["target"]), {"grpo": str(models["grpo"]), "sft": str(models["sft"])})
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    checked = invoke("check", str(tmp_path / "recipe.yml"))  # this package's own checks, from headers
    assert checked.exit_code == 0 and "ok: the recipe and its models are compatible" in checked.output, checked.output
    out = run_stock(recipe, tmp_path / "out")
    merged, t, g, s = (read_tensors(p) for p in (out, models["target"], models["grpo"], models["sft"]))
    assert set(merged) == set(t) and "model.layers.0.self_attn.q_norm.weight" in merged and "lm_head.weight" in merged
    lam = data["parameters"]["lambda"]
    for key, value in merged.items():
        assert bound_ratio(value, t[key], [(g[key], s[key], lam)]) <= 1.0, key


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_recipes_lists_every_shipped_recipe_with_target_donors_and_lambda():
    result = invoke("recipes")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{len(SHIPPED)} recipes in ")
    for recipe in shipped_recipes():
        at = lines.index(f"{recipe.name}  (λ = {'+1' if recipe.name.endswith('_add') else '-1'})")
        block = [line.split() for line in lines[at + 1 : at + 4]]
        data = yaml.safe_load(recipe.path.read_text(encoding="utf-8"))
        donors = {e["parameters"]["role"]: e["model"] for e in data["models"]}
        assert block == [["target", data["base_model"]], ["grpo", donors["grpo"]], ["sft", donors["sft"]]]


@pytest.mark.parametrize("name", ["qwen1.5b_add", "qwen7b_sub.yml", "olmo2_7b_add"])
def test_recipes_show_prints_the_file_verbatim(name):
    result = invoke("recipes", "show", name)
    assert result.exit_code == 0, result.output
    assert result.output == (recipes_dir() / f"{name.removesuffix('.yml')}.yml").read_text(encoding="utf-8")


def test_recipes_show_of_an_unknown_name_is_one_line_naming_it_and_the_choices():
    result = invoke("recipes", "show", "qwen3_add")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "'qwen3_add'" in lines[0]
    assert all(name.removesuffix(".yml") in lines[0] for name in SHIPPED)
