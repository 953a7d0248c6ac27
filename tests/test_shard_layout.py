"""The same shard files as mergekit's own writer, on the real models' layouts.

Stand-ins keep the structure that decides the split (the order of tensors and their
sizes relative to one another: Qwen2.5-7B's untied head and four input shards, with
an embedding about 2.3 layers big; Qwen2.5-1.5B's tied head and one input shard,
with an embedding about 5 layers big) at a few megabytes, and the output shard size
is scaled with them, so each output has several shards, as a real 7B merge has.
Every output file, index included, must equal stock `mergekit-yaml`'s byte for byte.
"""

import hashlib

import pytest
from conftest import recipe_dict
from mergekit_runs import mergekit_yaml, ours

from mergekit_reasoning.core.formats import SAFETENSORS_INDEX
from mergekit_reasoning.testing.standins import write_trio

LAYOUTS = {
    # 28 layers, untied head, the embedding ~2.3 layers, four input shards
    "qwen2.5-7b": dict(num_layers=28, tie_word_embeddings=False, vocab_rows=1400, max_shard_bytes=800_000),
    # 28 layers, tied head, the embedding ~5 layers, one input shard
    "qwen2.5-1.5b": dict(num_layers=28, tie_word_embeddings=True, vocab_rows=3000),
}


def _files(folder):
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors" or p.name == SAFETENSORS_INDEX)
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("out_shard_size", ["600K", "1M"])
def test_shards_equal_stock_mergekit_byte_for_byte(layout, out_shard_size, tmp_path):
    models = write_trio(tmp_path / "models", **LAYOUTS[layout])
    if layout == "qwen2.5-7b":
        assert len(list(models["target"].glob("*.safetensors"))) == 4
    recipe = recipe_dict(models["target"], models["grpo"], models["sft"], 0.7)
    stock = tmp_path / "stock" / "out"
    done = mergekit_yaml(recipe, tmp_path / "stock", stock, "--out-shard-size", out_shard_size)
    assert done.returncode == 0, done.stderr
    mine = tmp_path / "mine" / "out"
    done = ours("merge", recipe, tmp_path / "mine", str(mine), "--quiet", "--out-shard-size", out_shard_size)
    assert done.returncode == 0, done.stderr
    expected = _files(stock)
    assert len([n for n in expected if n.endswith(".safetensors")]) >= 3
    assert _files(mine) == expected
