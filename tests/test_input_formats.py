"""Every input format and entry point that `task_arithmetic` accepts, with the same checks
on each: pickled `.bin` and safetensors in any mix, single files (`mergekit-pytorch`), and
LoRA donors on tied and untied targets. Values against the float64 reference, and against
stock `task_arithmetic` on the same inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import recipe_dict
from helpers import assert_bitwise_equal, pickled_copy, read_tensors
from mergekit_runs import run_stock

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.executor import run
from mergekit_reasoning.executor.recipe import Recipe
from mergekit_reasoning.method.compat import stored_shapes
from mergekit_reasoning.testing.reference import bound_ratio, ulp

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"
UP = "model.layers.0.mlp.up_proj.weight"


def task_arithmetic(target, grpo, sft, lam=1.0) -> dict:
    return {
        "merge_method": "task_arithmetic",
        "base_model": str(target),
        "models": [
            {"model": str(grpo), "parameters": {"weight": lam}},
            {"model": str(sft), "parameters": {"weight": -lam}},
        ],
        "parameters": {"normalize": False},
        "dtype": "float32",  # stock arithmetic happens in the load dtype
        "out_dtype": "bfloat16",
    }


def assert_exact(merged, target, grpo, sft, lam=1.0, head_source=None):
    """Every merged tensor within the float64 reference's bound; the inputs are folders or files."""
    t, g, s = (read_tensors(p) for p in (target, grpo, sft))
    assert set(merged) == set(t)
    for name, value in merged.items():
        source = head_source if (name == HEAD and head_source) else name
        assert bound_ratio(value, t[name], [(g[source], s[source], lam)]) <= 1.0, name


def assert_like_task_arithmetic(ours, theirs):
    assert set(ours) == set(theirs)
    for name in ours:
        a, b = ours[name].double(), theirs[name].double()
        assert ((a - b).abs() <= ulp(b, torch.bfloat16)).all(), name  # one bf16 step at most


@pytest.fixture(scope="module")
def pickled(trio, untied_trio, tmp_path_factory):
    root = tmp_path_factory.mktemp("pickled")
    return {
        (kind, role): pickled_copy(models[role], root / f"{kind}-{role}")
        for kind, models in (("tied", trio), ("untied", untied_trio))
        for role in ("target", "grpo", "sft")
    }


@pytest.mark.parametrize(
    "kind, as_bin, lazy",
    [
        ("tied", {"sft"}, False),  # a .bin donor beside a safetensors target
        ("tied", {"target"}, False),
        ("untied", {"target"}, False),  # an untied .bin target: its lm_head is read from the pickle
        ("untied", {"target", "grpo", "sft"}, True),  # all pickled, read by mergekit's lazy unpickler
    ],
)
def test_pickled_and_safetensors_in_any_mix(trio, untied_trio, pickled, tmp_path, kind, as_bin, lazy):
    folders = trio if kind == "tied" else untied_trio
    models = {role: pickled[kind, role] if role in as_bin else folders[role] for role in ("target", "grpo", "sft")}
    lam = 0.8
    recipe = recipe_dict(models["target"], models["grpo"], models["sft"], lam)
    ours = read_tensors(run_stock(recipe, tmp_path / "ours", lazy_unpickle=lazy))
    assert_exact(ours, models["target"], models["grpo"], models["sft"], lam)
    theirs = task_arithmetic(models["target"], models["grpo"], models["sft"], lam)
    assert_like_task_arithmetic(ours, read_tensors(run_stock(theirs, tmp_path / "theirs", lazy_unpickle=lazy)))
    if as_bin == {"target"}:  # the streaming executor reads the same inputs to the same bits
        run.merge(Recipe.from_data(recipe), [tmp_path / "streamed"])
        assert_bitwise_equal(read_tensors(tmp_path / "streamed"), ours)


def mismatched(make_model, tmp_path, how: str) -> Path:
    """A donor that does not fit the tiny target: resized vocabulary, or one tensor reshaped."""
    if how == "vocabulary":
        return make_model("resized", vocab_rows=480)
    donor = make_model("reshaped")
    tensors = read_tensors(donor)
    tensors[UP] = torch.zeros(129, 64, dtype=tensors[UP].dtype)
    from safetensors.torch import save_file

    save_file(tensors, donor / "model.safetensors", metadata={"format": "pt"})
    return donor


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize(
    "how, line",
    [
        (
            "vocabulary",
            "model.embed_tokens.weight: vocabulary rows differ; .*run `mergekit-reasoning merge RECIPE OUT`",
        ),
        ("tensor", r"model {donor}: tensor model.layers.0.mlp.up_proj.weight has shape \[129, 64\], but the target's"),
    ],
)
def test_every_format_gets_the_same_checks(trio, make_model, tmp_path, fmt, how, line):
    donor = mismatched(make_model, tmp_path, how)
    if fmt == "bin":
        donor = pickled_copy(donor, tmp_path / "donor-bin")
    recipe = recipe_dict(trio["target"], donor, trio["sft"])
    with pytest.raises(RecipeError, match=line.format(donor=donor)):
        run_stock(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pickled_shapes_are_read_without_the_weights(tmp_path):
    path = tmp_path / "big.bin"
    torch.save({"w": torch.zeros(4096, 4096), "b": torch.zeros(7, dtype=torch.bfloat16)}, path)  # 64 MiB
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs /proc/self/io to count the bytes read")

    def bytes_read():
        return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar:")).split()[1])

    before = bytes_read()
    assert stored_shapes(str(path)) == {"w": (4096, 4096), "b": (7,)}
    assert bytes_read() - before < 1 << 20  # the pickle and the archive's index, not 64 MiB of weights


def raw_merge(recipe: dict, out: Path) -> Path:
    """What `mergekit-pytorch RECIPE OUT` runs, in this process."""
    from mergekit.graph import Executor
    from mergekit.options import MergeOptions
    from mergekit.scripts.merge_raw_pytorch import RawPyTorchMergeConfig, plan_flat_merge

    config = RawPyTorchMergeConfig.model_validate(recipe)
    Executor(plan_flat_merge(config, str(out), False, False, MergeOptions(quiet=True)), math_device="cpu").execute()
    return out


def test_single_file_references_merge_like_task_arithmetic(trio, pickled, tmp_path):
    files = {
        "target": trio["target"] / "model.safetensors",
        "grpo": pickled["tied", "grpo"] / "pytorch_model.bin",
        "sft": trio["sft"] / "model.safetensors",
    }
    lam = 0.5
    ours = read_tensors(raw_merge(recipe_dict(files["target"], files["grpo"], files["sft"], lam), tmp_path / "ours"))
    assert_exact(ours, files["target"], files["grpo"], files["sft"], lam)
    theirs = task_arithmetic(files["target"], files["grpo"], files["sft"], lam)
    assert_like_task_arithmetic(ours, read_tensors(raw_merge(theirs, tmp_path / "theirs")))


def test_single_file_refusals_are_one_line_from_mergekit_pytorch(trio, make_model, tmp_path):
    donor = mismatched(make_model, tmp_path, "tensor") / "model.safetensors"
    recipe = recipe_dict(trio["target"] / "model.safetensors", donor, trio["sft"] / "model.safetensors")
    (tmp_path / "recipe.yml").write_text(
        yaml.safe_dump({k: recipe[k] for k in ("merge_method", "base_model", "models")})
    )
    pytorch = Path(sys.executable).with_name("mergekit-pytorch")
    done = subprocess.run(
        [str(pytorch), str(tmp_path / "recipe.yml"), str(tmp_path / "out")], capture_output=True, text=True
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: model {donor}: tensor {UP} has shape [129, 64], but the target's has [128, 64]"
    )
    del recipe["models"][1]["parameters"]
    with pytest.raises(RecipeError, match=f"model {trio['sft'] / 'model.safetensors'} has no role"):
        raw_merge({k: recipe[k] for k in ("merge_method", "base_model", "models")}, tmp_path / "norole")
    assert not (tmp_path / "norole").exists()


def lora_adapter(model: Path, out: Path) -> Path:
    """A LoRA adapter for `model` with nonzero updates of q_proj and v_proj."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(out))
    return out


def merged_lora(reference: str, cache: Path) -> Path:
    """The folder mergekit merged the LoRA donor `reference` into (it merges each once)."""
    from mergekit.common import ModelReference

    folder = Path(ModelReference.parse(reference).merged(cache_dir=str(cache)).model.path)
    assert folder.parent == cache
    return folder


def test_lora_donor_on_an_untied_target_like_task_arithmetic(untied_trio, tmp_path):
    t = untied_trio
    grpo = f"{t['grpo']}+{lora_adapter(t['grpo'], tmp_path / 'adapter')}"
    ours = read_tensors(
        run_stock(recipe_dict(t["target"], grpo, t["sft"]), tmp_path / "ours", lora_merge_cache=str(tmp_path / "a"))
    )
    donor = merged_lora(grpo, tmp_path / "a")
    assert_exact(ours, t["target"], donor, t["sft"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(read_tensors(donor)[q], read_tensors(t["grpo"])[q])  # the adapter did apply
    theirs = run_stock(
        task_arithmetic(t["target"], grpo, t["sft"]), tmp_path / "theirs", lora_merge_cache=str(tmp_path / "b")
    )
    assert_like_task_arithmetic(ours, read_tensors(theirs))


def test_lora_donors_on_a_tied_target(trio, untied_trio, tmp_path):
    tied_grpo = f"{trio['grpo']}+{lora_adapter(trio['grpo'], tmp_path / 'tied-adapter')}"
    out = run_stock(
        recipe_dict(trio["target"], tied_grpo, trio["sft"]), tmp_path / "a", lora_merge_cache=str(tmp_path / "ca")
    )
    assert_exact(read_tensors(out), trio["target"], merged_lora(tied_grpo, tmp_path / "ca"), trio["sft"])

    # untied donors of a tied target: stock mergekit cannot keep the output tied, and says
    # which executor can; that one loads the LoRA donor (into its cache folder) and merges it
    untied_grpo = f"{untied_trio['grpo']}+{lora_adapter(untied_trio['grpo'], tmp_path / 'untied-adapter')}"
    recipe = recipe_dict(trio["target"], untied_grpo, untied_trio["sft"])
    with pytest.raises(RecipeError, match=r"output stays tied.*run `mergekit-reasoning merge RECIPE OUT` instead"):
        run_stock(recipe, tmp_path / "b", lora_merge_cache=str(tmp_path / "cb"))
    assert not (tmp_path / "b").exists()
    (streamed,) = run.merge(Recipe.from_data(recipe), [tmp_path / "c"])  # its default LoRA cache folder
    merged = read_tensors(streamed)
    assert HEAD not in merged and json.loads((streamed / "config.json").read_text())["tie_word_embeddings"]
    cache = Path(os.environ["MERGEKIT_REASONING_CACHE"]) / "lora-merges"
    assert_exact(merged, trio["target"], merged_lora(untied_grpo, cache), untied_trio["sft"])
