"""Vectors as files: extract → share → apply → verify, and every bad input."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import recipe_dict
from helpers import assert_bitwise_equal, read_tensors
from mergekit_runs import ours, run_stock

from mergekit_reasoning.cli import main
from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.vectors.files import Sparsify, extract


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEKIT_REASONING_CACHE", str(tmp_path / "hash-cache"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def vector_recipe(target, vector, lam=1.0):
    return {
        "merge_method": "reasoning_vector",
        "base_model": str(target),
        "models": [{"model": str(vector), "parameters": {"role": "vector"}}],
        "parameters": {"lambda": lam},
        "out_dtype": "bfloat16",  # no `dtype`: the float32 vector is used as stored
    }


@pytest.mark.parametrize("which", ["trio", "untied_trio"])
def test_applying_a_float32_vector_equals_merging_the_pair(which, request, tmp_path):
    t = request.getfixturevalue(which)
    manifest = extract(t["grpo"], t["sft"], tmp_path / "vector")
    assert ("lm_head.weight" in manifest["tensors"]) == (which == "untied_trio")
    assert manifest["relative_error"] == 0.0
    pair = read_tensors(run_stock(recipe_dict(t["target"], t["grpo"], t["sft"], 0.6), tmp_path / "pair"))
    stock = read_tensors(run_stock(vector_recipe(t["target"], tmp_path / "vector", 0.6), tmp_path / "via-vector"))
    assert_bitwise_equal(stock, pair)
    done = ours(
        "merge", vector_recipe(t["target"], tmp_path / "vector", 0.6), tmp_path, str(tmp_path / "ours"), "--quiet"
    )
    assert done.returncode == 0, done.stderr
    assert_bitwise_equal(read_tensors(tmp_path / "ours"), pair)


def test_manifest_describes_the_vector(trio, tmp_path):
    manifest = extract(trio["grpo"], trio["sft"], tmp_path / "v")
    stored = read_tensors(tmp_path / "v")
    g, s = read_tensors(trio["grpo"]), read_tensors(trio["sft"])
    assert manifest["sources"]["grpo"]["model"] == str(trio["grpo"])
    assert manifest["dtype"] == "float32" and manifest["sparsify"] is None
    assert manifest["architecture"]["hidden_size"] == 64
    assert set(manifest["tensors"]) == set(stored) == set(g)
    for name, entry in manifest["tensors"].items():
        exact = g[name].double() - s[name].double()
        assert entry["shape"] == list(exact.shape)
        assert entry["norm"] == pytest.approx(float(exact.norm()), rel=1e-6)
    assert set(manifest["shards"]) == {"model.safetensors"}
    assert json.loads((tmp_path / "v" / "config.json").read_text())["tie_word_embeddings"] is True


def test_bfloat16_storage_reports_its_distance(trio, tmp_path):
    manifest = extract(trio["grpo"], trio["sft"], tmp_path / "v", dtype="bfloat16")
    assert 0 < manifest["relative_error"] < 0.01
    assert all(t.dtype == torch.bfloat16 for t in read_tensors(tmp_path / "v").values())


def test_magnitude_sparsification_keeps_the_largest_entries(trio, tmp_path):
    manifest = extract(trio["grpo"], trio["sft"], tmp_path / "v", sparsify=Sparsify("magnitude", 0.1))
    g, s, v = read_tensors(trio["grpo"]), read_tensors(trio["sft"]), read_tensors(tmp_path / "v")
    name = "model.layers.0.mlp.up_proj.weight"
    full = (g[name].float() - s[name].float()).abs()
    kept = v[name] != 0
    assert int(kept.sum()) == round(0.1 * full.numel())
    assert full[kept].min() >= full[~kept].max()
    assert 0 < manifest["relative_error"] < 1


def test_dare_is_seeded_and_rescales(trio, tmp_path):
    a = extract(trio["grpo"], trio["sft"], tmp_path / "a", sparsify=Sparsify("dare", 0.5, seed=1))
    b = extract(trio["grpo"], trio["sft"], tmp_path / "b", sparsify=Sparsify("dare", 0.5, seed=1))
    c = extract(trio["grpo"], trio["sft"], tmp_path / "c", sparsify=Sparsify("dare", 0.5, seed=2))
    assert a["shards"] == b["shards"] != c["shards"]
    g, s, v = read_tensors(trio["grpo"]), read_tensors(trio["sft"]), read_tensors(tmp_path / "a")
    name = "model.layers.1.self_attn.q_proj.weight"
    full = g[name].float() - s[name].float()
    kept = v[name] != 0
    torch.testing.assert_close(v[name][kept], full[kept] / 0.5)


def test_inspect_reports_norms_relative_size_cosine_and_plot(trio, tmp_path):
    extract(trio["grpo"], trio["sft"], tmp_path / "v")
    result = invoke(
        "inspect",
        tmp_path / "v",
        "--target",
        trio["target"],
        "--compare",
        tmp_path / "v",
        "--plot",
        tmp_path / "v.png",
        "--json",
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output[: result.output.rindex("}") + 1])
    assert stats["total"]["cosine"] == pytest.approx(1.0)
    assert set(stats["layers"]) >= {"0", "1", "embed_tokens"}
    g, s, t = read_tensors(trio["grpo"]), read_tensors(trio["sft"]), read_tensors(trio["target"])
    layer0 = [n for n in g if n.startswith("model.layers.0.")]
    expected = sum(float((g[n].double() - s[n].double()).square().sum()) for n in layer0) ** 0.5
    assert stats["layers"]["0"]["norm"] == pytest.approx(expected, rel=1e-6)
    target_norm = sum(float(t[n].double().square().sum()) for n in layer0) ** 0.5
    assert stats["layers"]["0"]["relative_to_target"] == pytest.approx(expected / target_norm, rel=1e-6)
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = invoke("inspect", tmp_path / "v")
    assert "| layer 0 |" in table.output and "| **total** |" in table.output


def test_verify_names_a_corrupted_shard(trio, tmp_path):
    extract(trio["grpo"], trio["sft"], tmp_path / "v")
    assert invoke("verify", tmp_path / "v").exit_code == 0
    shard = tmp_path / "v" / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = invoke("verify", tmp_path / "v")
    assert result.exit_code == 1
    assert "shard model.safetensors: content differs from the manifest" in result.output


def test_merges_are_reproducible_and_verifiable(trio, tmp_path):
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"], 0.5)
    for name in ("one", "two"):
        assert (
            ours("merge", recipe, tmp_path, str(tmp_path / name), "--quiet", "--out-shard-size", "30K").returncode == 0
        )
    one = json.loads((tmp_path / "one" / "reasoning_merge.json").read_text())
    two = json.loads((tmp_path / "two" / "reasoning_merge.json").read_text())
    assert len(one["outputs"]) > 1 and one["outputs"] == two["outputs"] and one["key"] == two["key"]
    assert {i["role"] for i in one["inputs"]} == {"target", "grpo", "sft"}
    assert one["packages"]["mergekit"] and one["recipe_sha256"]
    result = invoke("verify", tmp_path / "one", "--inputs", "--remerge")
    assert result.exit_code == 0, result.output
    shard = sorted((tmp_path / "two").glob("model-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    result = invoke("verify", tmp_path / "two")
    assert result.exit_code == 1
    assert f"shard {shard.name}: content differs from the manifest (edited or corrupted)" in result.output
    first = sorted((tmp_path / "one").glob("model-*.safetensors"))[0]
    first.unlink()
    assert f"shard {first.name}: missing" in invoke("verify", tmp_path / "one").output


def test_vector_from_another_shape_is_refused(trio, make_model, tmp_path):
    # Qwen2.5-1.5B's widths; the mismatch under test is the hidden size, so a short vocabulary will do.
    wide = dict(shape="qwen2.5-1.5b", num_layers=1, vocab_rows=1024, tokenizer=False)
    extract(make_model("wide-grpo", like_seed=3, **wide), make_model("wide-sft", like_seed=2, **wide), tmp_path / "v")
    result = invoke("check", write_recipe(tmp_path, vector_recipe(trio["target"], tmp_path / "v")))
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"Error: model {tmp_path / 'v'}: hidden_size is 1536, but the target {trio['target']} has 64"
    )


def write_recipe(tmp_path, recipe):
    import yaml

    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_manifest_that_does_not_match_its_shards(trio, tmp_path):
    extract(trio["grpo"], trio["sft"], tmp_path / "v")
    path = tmp_path / "v" / "reasoning_vector.json"
    manifest = json.loads(path.read_text())
    manifest["tensors"]["model.norm.weight"]["shape"] = [65]
    path.write_text(json.dumps(manifest))
    result = invoke("check", write_recipe(tmp_path, vector_recipe(trio["target"], tmp_path / "v")))
    assert result.exit_code == 1
    assert "model.norm.weight has shape [64] in its shard, but the manifest says [65]" in result.output


def test_truncated_vector_shard(trio, tmp_path):
    extract(trio["grpo"], trio["sft"], tmp_path / "v")
    shard = tmp_path / "v" / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    result = invoke("check", write_recipe(tmp_path, vector_recipe(trio["target"], tmp_path / "v")))
    assert result.exit_code == 1 and "model.safetensors" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "shard model.safetensors: content differs" in invoke("verify", tmp_path / "v").output


def test_roles_must_match_what_the_folder_is(trio, tmp_path):
    extract(trio["grpo"], trio["sft"], tmp_path / "v")
    as_grpo = recipe_dict(trio["target"], tmp_path / "v", trio["sft"])
    result = invoke("check", write_recipe(tmp_path, as_grpo))
    assert "is a vector folder: give it `role: vector`" in result.output and result.exit_code == 1
    not_a_vector = vector_recipe(trio["target"], trio["grpo"])
    result = invoke("check", write_recipe(tmp_path, not_a_vector))
    assert "has role vector but is not a vector folder" in result.output
    with pytest.raises(RecipeError, match="has role vector but is not a vector folder"):
        run_stock(not_a_vector, tmp_path / "out")


def test_loading_a_float32_vector_as_bfloat16_is_refused(trio, tmp_path):
    extract(trio["grpo"], trio["sft"], tmp_path / "v")
    recipe = dict(vector_recipe(trio["target"], tmp_path / "v"), dtype="bfloat16")
    result = invoke("check", write_recipe(tmp_path, recipe))
    assert result.exit_code == 1 and "remove `dtype`" in result.output


def test_extract_never_overwrites_a_complete_folder(trio, make_model, tmp_path):
    extract(trio["grpo"], trio["sft"], tmp_path / "v")
    before = (tmp_path / "v" / "model.safetensors").read_bytes()
    with pytest.raises(RecipeError, match="is not empty"):
        extract(trio["sft"], trio["grpo"], tmp_path / "v")
    other = make_model("other-layers", like_seed=None, num_layers=3)
    with pytest.raises(RecipeError, match="num_hidden_layers"):
        extract(other, trio["sft"], tmp_path / "v", overwrite=True)
    assert (tmp_path / "v" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sparse_storage_is_compact_and_densifies_to_the_dense_folder(trio, tmp_path):
    from mergekit_reasoning.vectors.files import densify
    from mergekit_reasoning.vectors.stats import vector_stats

    plan = Sparsify("magnitude", 0.1)
    dense = extract(trio["grpo"], trio["sft"], tmp_path / "dense", dtype="bfloat16", sparsify=plan)
    sparse = extract(trio["grpo"], trio["sft"], tmp_path / "sparse", dtype="bfloat16", sparsify=plan, storage="sparse")
    size = lambda folder: sum(p.stat().st_size for p in folder.glob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "sparse") * 2.5 < size(tmp_path / "dense")
    assert sparse["storage"] == "sparse" and sparse["tensors"] == dense["tensors"]
    assert vector_stats(tmp_path / "sparse") == vector_stats(tmp_path / "dense")
    assert invoke("verify", tmp_path / "sparse").exit_code == 0

    restored = densify(tmp_path / "sparse", tmp_path / "restored")
    assert restored["shards"] == dense["shards"]  # byte for byte the dense extraction
    assert_bitwise_equal(read_tensors(tmp_path / "restored"), read_tensors(tmp_path / "dense"))


def test_a_sparse_folder_is_refused_with_a_pointer_to_densify(trio, tmp_path):
    extract(trio["grpo"], trio["sft"], tmp_path / "v", sparsify=Sparsify("dare", 0.3), storage="sparse")
    result = invoke("check", write_recipe(tmp_path, vector_recipe(trio["target"], tmp_path / "v")))
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: vector {tmp_path / 'v'} is stored sparse, for sharing: "
        f"run `mergekit-reasoning densify {tmp_path / 'v'} DIR` and apply DIR"
    )
    with pytest.raises(RecipeError, match="is stored sparse"):
        run_stock(vector_recipe(trio["target"], tmp_path / "v"), tmp_path / "out")


def test_blockwise_float64_sums_equal_the_whole_tensor_ones():
    """inspect and extract sum in float64 block by block (big embeddings are never copied whole)."""
    from mergekit_reasoning.core.reductions import dot64
    from mergekit_reasoning.vectors.files import _norms

    x, y = (torch.randn(3000, 700, generator=torch.Generator().manual_seed(s)).to(torch.bfloat16) for s in (1, 2))
    whole = float((x.double() * y.double()).sum())
    assert dot64(x, y, block=1 << 18) == pytest.approx(whole, rel=1e-12)  # eight blocks and a partial one
    full = y.float()
    norms = _norms(x, full, block=1 << 18)
    assert norms == pytest.approx(
        (float(x.double().norm()), float(full.double().norm()), float((x.double() - full.double()).norm())), rel=1e-12
    )
