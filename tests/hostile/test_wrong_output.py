"""Silent wrong output: a merge that would be wrong is refused, and what is checked is checked."""

import json
import os
import time

import pytest
import torch
from conftest import recipe_dict
from mergekit_runs import mergekit_yaml
from safetensors.torch import load_file, save_file

from mergekit_reasoning.core.formats import SAFETENSORS_INDEX

from .conftest import invoke, one_line_error, write_recipe

# --- λ must be a finite number ----------------------------------------------------------

BAD_LAMBDAS = [float("inf"), float("-inf"), float("nan"), "abc", [1.0, float("nan")], [{"value": "x"}], True]


@pytest.mark.parametrize(
    "lam", BAD_LAMBDAS, ids=["inf", "-inf", "nan", "text", "nan-in-gradient", "text-filtered", "bool"]
)
def test_check_and_merge_refuse_a_lambda_that_is_not_a_finite_number(trio, tmp_path, lam):
    recipe = write_recipe(
        tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"], 1.0, parameters={"lambda": lam})
    )
    one_line_error(invoke("check", recipe), "lambda")
    one_line_error(invoke("merge", recipe, tmp_path / "out"), "lambda")
    assert not (tmp_path / "out").exists()


def test_a_lambda_on_one_model_is_checked_too(trio, tmp_path):
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"])
    recipe["models"][0]["parameters"]["lambda"] = float("nan")
    line = one_line_error(invoke("check", write_recipe(tmp_path, recipe)), "lambda must be finite")
    assert str(trio["grpo"]) in line and "differs from" not in line


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_swept_lambda_must_be_finite(trio, tmp_path, value):
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"]))
    one_line_error(invoke("merge", recipe, tmp_path / "out", "--lambda", "1", "--lambda", value), "finite")
    assert not (tmp_path / "out").exists()


def test_a_huge_lambda_merges_with_a_note(trio, tmp_path):
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"], 1e5))
    result = invoke("check", recipe)
    assert result.exit_code == 0 and "far outside the usual range" in result.output


@pytest.mark.parametrize("lam", [float("inf"), float("nan"), 1e308])
def test_the_stock_path_refuses_a_non_finite_merge(trio, tmp_path, lam):
    done = mergekit_yaml(recipe_dict(trio["target"], trio["grpo"], trio["sft"], lam), tmp_path, tmp_path / "out")
    assert done.returncode != 0
    assert "lambda" in done.stderr and ("finite" in done.stderr or "inf" in done.stderr)
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --- only float tensors are merged --------------------------------------------------------


def _with_integer_tensor(folder, dtype, name="model.layers.0.mlp.up_proj.weight"):
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = (tensors[name].float() * 1000).to(dtype)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("role, dtype", [("target", torch.int32), ("sft", torch.int16), ("grpo", torch.int8)])
def test_integer_tensors_are_refused_naming_tensor_and_model(copy_model, trio, tmp_path, role, dtype):
    models = dict(trio)
    models[role] = _with_integer_tensor(copy_model(trio[role], role), dtype)
    recipe = write_recipe(tmp_path, recipe_dict(models["target"], models["grpo"], models["sft"]))
    for result in (invoke("check", recipe), invoke("merge", recipe, tmp_path / "out")):
        one_line_error(result, "model.layers.0.mlp.up_proj.weight", str(models[role]), "float")
    assert not (tmp_path / "out").exists()


def test_the_stock_path_refuses_integer_tensors(copy_model, trio, tmp_path):
    sft = _with_integer_tensor(copy_model(trio["sft"], "sft"), torch.int32)
    done = mergekit_yaml(recipe_dict(trio["target"], trio["grpo"], sft), tmp_path, tmp_path / "out")
    assert done.returncode != 0 and "only float tensors" in done.stderr


# --- vectors are checked before use -------------------------------------------------------


@pytest.fixture
def vector(trio, tmp_path):
    out = tmp_path / "vector"
    assert invoke("extract", "--grpo", trio["grpo"], "--sft", trio["sft"], out).exit_code == 0
    return out


def _tamper(shard):
    stat = os.stat(shard)
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, shard, metadata={"format": "pt"})
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old modification time


def _vector_recipe(trio, vector):
    return {
        "merge_method": "reasoning_vector",
        "base_model": str(trio["target"]),
        "models": [{"model": str(vector), "parameters": {"role": "vector"}}],
        "parameters": {"lambda": 1.0},
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }


def test_a_changed_vector_shard_is_refused_by_merge_and_the_stock_cli(trio, tmp_path, vector):
    _tamper(vector / "model.safetensors")
    recipe = write_recipe(tmp_path, _vector_recipe(trio, vector))
    one_line_error(invoke("merge", recipe, tmp_path / "out"), "model.safetensors", "differs from its manifest")
    done = mergekit_yaml(_vector_recipe(trio, vector), tmp_path / "stock", tmp_path / "stock-out")
    assert done.returncode != 0 and "differs from its manifest" in done.stderr


def test_a_vector_missing_a_shard_or_with_an_extra_one_is_refused(trio, tmp_path, vector):
    (vector / "model-extra.safetensors").write_bytes((vector / "model.safetensors").read_bytes())
    one_line_error(
        invoke("merge", write_recipe(tmp_path, _vector_recipe(trio, vector)), tmp_path / "out"), "not in its manifest"
    )


@pytest.fixture
def sparse(trio, tmp_path):
    out = tmp_path / "sparse"
    result = invoke(
        "extract", "--grpo", trio["grpo"], "--sft", trio["sft"], out, "--storage", "sparse", "--density", "1"
    )
    assert result.exit_code == 0, result.output
    return out


def _rewrite_indices(folder, change):
    shard = folder / "model.safetensors"
    tensors = load_file(shard)
    key = next(k for k in sorted(tensors) if k.endswith(".nonzero_indices") and tensors[k].numel() > 2)
    tensors[key] = change(tensors[key].clone())
    save_file(tensors, shard, metadata={"format": "pt"})
    manifest = json.loads((folder / "reasoning_vector.json").read_text())
    from mergekit_reasoning.core.hashing import sha256_file

    manifest["shards"]["model.safetensors"] = sha256_file(shard)  # a consistent, hostile folder
    (folder / "reasoning_vector.json").write_text(json.dumps(manifest))


def _negative(i):
    i[0] = -5
    return i


def _past_the_end(i):
    i[-1] = 10**9
    return i


def _repeated(i):
    i[1] = i[0]
    return i


def _backwards(i):
    return i.flip(0)


@pytest.mark.parametrize("change", [_negative, _past_the_end, _repeated, _backwards])
def test_densify_refuses_malformed_sparse_indices(sparse, tmp_path, change):
    _rewrite_indices(sparse, change)
    one_line_error(invoke("densify", sparse, tmp_path / "dense"), "sparse entries", "malformed")
    assert not (tmp_path / "dense").exists()


def test_densify_does_not_launder_a_tampered_source(sparse, tmp_path):
    _tamper(sparse / "model.safetensors")
    one_line_error(invoke("densify", sparse, tmp_path / "dense"), "differs from its manifest")
    assert not (tmp_path / "dense").exists()


def test_a_vector_is_never_taken_for_a_model(trio, tmp_path, vector):
    for args in (("--grpo", vector, "--sft", trio["sft"]), ("--grpo", trio["grpo"], "--sft", vector)):
        one_line_error(invoke("extract", *args, tmp_path / "v2"), "is a vector folder, not a model")


@pytest.mark.parametrize(
    "broken", [{"dtype": 5}, {"tensors": "all"}, {"shards": {"../x": "0" * 64}}, {"storage": "zip"}]
)
def test_a_malformed_vector_manifest_is_one_line(trio, tmp_path, vector, broken):
    manifest = json.loads((vector / "reasoning_vector.json").read_text())
    manifest.update(broken)
    (vector / "reasoning_vector.json").write_text(json.dumps(manifest))
    one_line_error(invoke("check", write_recipe(tmp_path, _vector_recipe(trio, vector))), "reasoning_vector.json")


# --- what verify says was checked was checked -----------------------------------------------


@pytest.fixture
def merged(copy_model, trio, tmp_path):
    models = {role: copy_model(trio[role], role) for role in ("target", "grpo", "sft")}
    recipe = write_recipe(tmp_path, recipe_dict(models["target"], models["grpo"], models["sft"]))
    assert invoke("merge", recipe, tmp_path / "out").exit_code == 0
    return tmp_path / "out", models


def test_verify_says_when_it_trusted_cached_hashes_and_rehash_reads(merged):
    out, models = merged
    result = invoke("verify", out, "--inputs")
    assert result.exit_code == 0 and "came from the hash cache" in result.output
    shard = models["sft"] / "model.safetensors"
    _tamper(shard)  # same size, same modification time, same inode: only its change time moved
    for args in ((), ("--rehash",)):
        result = invoke("verify", out, "--inputs", *args)
        assert result.exit_code == 1 and "model.safetensors changed since the merge" in result.output


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "generation_config.json"])
def test_verify_sees_a_changed_config_or_tokenizer(merged, name):
    out, models = merged
    path = models["target"] / name
    if not path.exists():
        pytest.skip(f"the stand-in has no {name}")
    time.sleep(0.01)
    data = json.loads(path.read_text())
    data["mkr_tampered"] = True
    path.write_text(json.dumps(data))
    result = invoke("verify", out, "--inputs")
    assert result.exit_code == 1 and f"{name} changed since the merge" in result.output


@pytest.mark.parametrize("outside", ["../elsewhere.safetensors", "/etc/passwd", "a/../../x.safetensors"])
def test_an_index_pointing_outside_its_folder_is_refused(copy_model, trio, tmp_path, outside):
    sft = copy_model(trio["sft"], "sft")
    names = list(load_file(sft / "model.safetensors"))
    weight_map = {name: "model.safetensors" for name in names}
    weight_map[names[0]] = outside
    (sft / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], sft))
    one_line_error(invoke("check", recipe), "points outside its folder")
