"""`mergekit-reasoning merge`: same bits as stock mergekit, plus the policies it can't do."""

import json

import pytest
import torch
from conftest import recipe_dict
from helpers import assert_bitwise_equal, bits, file_hashes, read_tensors
from mergekit_runs import mergekit_yaml, ours, run_stock

from mergekit_reasoning.testing.reference import bound_ratio

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


@pytest.mark.parametrize("which", ["trio", "untied_trio"])
def test_bitwise_identical_to_stock_mergekit_yaml(which, request, tmp_path):
    t = request.getfixturevalue(which)
    recipe = recipe_dict(t["target"], t["grpo"], t["sft"], 0.7)
    assert mergekit_yaml(recipe, tmp_path / "a", tmp_path / "a" / "merged").returncode == 0
    done = ours("merge", recipe, tmp_path / "b", str(tmp_path / "b" / "merged"), "--quiet")
    assert done.returncode == 0, done.stderr
    stock, mine = tmp_path / "a" / "merged", tmp_path / "b" / "merged"
    assert_bitwise_equal(read_tensors(mine), read_tensors(stock))
    assert file_hashes(mine) == file_hashes(stock)
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "mergekit_config.yml",
    ):
        assert (mine / name).read_bytes() == (stock / name).read_bytes(), name
    # mergekit lists the card's models from a set, in an order that changes from run to run
    assert sorted((mine / "README.md").read_text().splitlines()) == sorted(
        (stock / "README.md").read_text().splitlines()
    )


def test_sharded_output_is_identical_tensor_for_tensor(trio, tmp_path):
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"])
    assert mergekit_yaml(recipe, tmp_path, tmp_path / "stock", "--out-shard-size", "20K").returncode == 0
    done = ours("merge", recipe, tmp_path, str(tmp_path / "ours"), "--out-shard-size", "20K", "--quiet")
    assert done.returncode == 0, done.stderr
    assert len(file_hashes(tmp_path / "ours")) > 1
    assert (tmp_path / "ours" / "model.safetensors.index.json").exists()
    assert_bitwise_equal(read_tensors(tmp_path / "ours"), read_tensors(tmp_path / "stock"))


def test_sweep_reads_once_and_equals_separate_merges(trio, tmp_path):
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"])
    done = ours(
        "merge",
        recipe,
        tmp_path,
        str(tmp_path / "sweep"),
        "--lambda",
        "-1",
        "--lambda",
        "0.5",
        "--lambda",
        "1",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    for lam in (-1.0, 0.5, 1.0):
        single = recipe_dict(trio["target"], trio["grpo"], trio["sft"], lam)
        # mergekit's own executor in this process: the fresh-interpreter mergekit-yaml is compared above
        run_stock(single, tmp_path / f"single{lam}")
        assert_bitwise_equal(
            read_tensors(tmp_path / "sweep" / f"lambda_{lam:g}"), read_tensors(tmp_path / f"single{lam}")
        )


def test_resized_vocabulary_policy(trio, make_model, tmp_path):
    grpo = make_model("grpo-resized", like_seed=3, vocab_rows=480)  # a fine-tune that trimmed its vocabulary
    done = ours("merge", recipe_dict(trio["target"], grpo, trio["sft"]), tmp_path, str(tmp_path / "out"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert (
        "warning: model.embed_tokens.weight: vocabulary rows differ; the vector applies to the 480 shared rows"
        in done.stderr
    )
    merged, t, g, s = (read_tensors(p) for p in (tmp_path / "out", trio["target"], grpo, trio["sft"]))
    assert merged[EMBED].shape == t[EMBED].shape
    assert bound_ratio(merged[EMBED][:480], t[EMBED][:480], [(g[EMBED], s[EMBED][:480], 1.0)]) <= 1.0
    assert torch.equal(bits(merged[EMBED][480:]), bits(t[EMBED][480:]))


def test_tied_target_with_untied_donors_stays_tied(trio, untied_trio, tmp_path):
    recipe = recipe_dict(trio["target"], untied_trio["grpo"], untied_trio["sft"])
    done = ours("merge", recipe, tmp_path, str(tmp_path / "out"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "output stays tied" in done.stderr
    merged = read_tensors(tmp_path / "out")
    assert HEAD not in merged
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    t, g, s = (read_tensors(p) for p in (trio["target"], untied_trio["grpo"], untied_trio["sft"]))
    assert bound_ratio(merged[EMBED], t[EMBED], [(g[EMBED], s[EMBED], 1.0)]) <= 1.0


def test_refuses_a_non_empty_output_and_replaces_it_only_when_asked(trio, tmp_path):
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    done = ours("merge", recipe, tmp_path, str(out), "--quiet")
    assert done.returncode == 1 and "is not empty" in done.stderr and (out / "keep.txt").exists()
    done = ours("merge", recipe, tmp_path, str(out), "--quiet", "--overwrite")
    assert done.returncode == 0, done.stderr
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_merge_leaves_nothing_that_looks_complete(trio, make_model, tmp_path):
    broken = make_model("truncated")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    done = ours("merge", recipe_dict(trio["target"], broken, trio["sft"]), tmp_path, str(tmp_path / "out"), "--quiet")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: model {broken}")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_recipes_it_cannot_stream_fall_back_to_mergekit_with_a_note(trio, tmp_path):
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"], tokenizer={"source": "base"})
    run_stock(recipe, tmp_path / "a" / "merged")
    done = ours("merge", recipe, tmp_path / "b", str(tmp_path / "b" / "merged"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "not streamed: merging with mergekit's own executor" in done.stderr
    mine = tmp_path / "b" / "merged"
    assert_bitwise_equal(read_tensors(mine), read_tensors(tmp_path / "a" / "merged"))
    assert (mine / "reasoning_merge.json").exists() and (mine / "tokenizer.json").exists()
    sweep = ours("merge", recipe, tmp_path / "c", str(tmp_path / "c" / "sweep"), "--lambda", "1", "--lambda", "2")
    assert sweep.returncode == 1 and "needs a streamable recipe" in sweep.stderr
    assert not (tmp_path / "c" / "sweep").exists() or not any((tmp_path / "c" / "sweep").iterdir())


def test_a_merge_leaves_its_shard_hashes_for_the_next_reader(trio, tmp_path, monkeypatch):
    """Scoring a fresh merge (the harness hashes what it scores) must not re-read its shards."""
    import hashlib

    from mergekit_reasoning.core import hashing

    monkeypatch.setenv("MERGEKIT_REASONING_CACHE", str(tmp_path / "hash-cache"))
    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"])
    done = ours("merge", recipe, tmp_path, str(tmp_path / "sweep"), "--lambda", "-1", "--lambda", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    recorded = {}
    for out in (tmp_path / "sweep").iterdir():
        for name, digest in json.loads((out / "reasoning_merge.json").read_text())["outputs"].items():
            assert digest == hashlib.sha256((out / name).read_bytes()).hexdigest()
            recorded[out / name] = digest
    assert len(recorded) == 2

    def no_reading(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(hashing, "sha256_file", no_reading)
    for shard, digest in recorded.items():
        assert hashing.cached_sha256(shard) == digest
    shard = next(iter(recorded))
    shard.write_bytes(shard.read_bytes())  # same bytes, new file identity: must be hashed afresh
    with pytest.raises(AssertionError, match="read again"):
        hashing.cached_sha256(shard)


def _merge_in_process(recipe: dict, tmp_path, name: str, *, lambdas=None, shard="5B"):
    import yaml

    from mergekit_reasoning.executor import stream
    from mergekit_reasoning.executor.recipe import Recipe
    from mergekit_reasoning.executor.run import MergeSettings

    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(recipe))
    root = tmp_path / name
    outs = [root / f"lambda_{lam:g}" for lam in lambdas] if lambdas else [root]
    options = MergeSettings(out_shard_size=shard).mergekit_options()
    stream.merge(Recipe.read(path).check(), outs, options, lambdas=lambdas)
    return outs


def mapped_writers(monkeypatch) -> list:
    """The output folders the mapped writer is opened for, from now on."""
    from mergekit_reasoning.executor import stream

    made = []

    class Spy(stream.MappedShards):
        def __init__(self, *args, **kw):
            made.append(args[0])
            super().__init__(*args, **kw)

    monkeypatch.setattr(stream, "MappedShards", Spy)
    return made


SCENARIOS = {
    "plain": dict(),
    "sharded": dict(shard="20K"),
    "sweep": dict(lambdas=[-1.0, 0.5, 1.0]),
    "resized vocabulary": dict(grpo_rows=480),
    "tied target, untied donors": dict(untied_donors=True),
    "float16 out of bfloat16 inputs": dict(extra={"out_dtype": "float16"}),
    "loaded as float32": dict(extra={"dtype": "float32"}),
    "no dtypes given": dict(extra={"dtype": None, "out_dtype": None}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_mapped_writer_writes_the_bytes_mergekits_writer_wrote(
    scenario, trio, untied_trio, make_model, tmp_path, monkeypatch
):
    """Every file of the output, the manifest's hashes included, as the mergekit-writer path made them."""
    from mergekit_reasoning.executor import stream

    spec = SCENARIOS[scenario]
    grpo, sft = (untied_trio["grpo"], untied_trio["sft"]) if spec.get("untied_donors") else (trio["grpo"], trio["sft"])
    if spec.get("grpo_rows"):
        grpo = make_model("grpo-resized", like_seed=3, vocab_rows=spec["grpo_rows"])
    recipe = recipe_dict(trio["target"], grpo, sft, 0.7)
    recipe.update(spec.get("extra", {}))
    recipe = {k: v for k, v in recipe.items() if v is not None}
    kwargs = {k: spec[k] for k in ("lambdas", "shard") if k in spec}

    made = mapped_writers(monkeypatch)
    mapped = _merge_in_process(recipe, tmp_path, "mapped", **kwargs)
    assert len(made) == len(mapped)  # the mapped writer really ran
    monkeypatch.setattr(stream, "output_entries", lambda tasks: None)  # mergekit's TensorWriter
    stock = _merge_in_process(recipe, tmp_path, "stock", **kwargs)
    assert len(made) == len(mapped)
    for a, b in zip(mapped, stock):
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir())
        for name in names:
            if name != "README.md":  # the card names its folder
                assert (a / name).read_bytes() == (b / name).read_bytes(), (scenario, name)
        recorded = json.loads((a / "reasoning_merge.json").read_text())["outputs"]
        assert recorded == file_hashes(a) and len(recorded) >= 1


def test_outputs_it_cannot_lay_out_ahead_keep_mergekits_writer(trio, tmp_path, monkeypatch):
    """A tensor mergekit would convert rather than read (or a mergekit that resolves names
    another way) leaves the headers unknown: the executor falls back, same result."""
    from mergekit_reasoning.executor import layout

    (reference,) = _merge_in_process(recipe_dict(trio["target"], trio["grpo"], trio["sft"]), tmp_path, "ref")
    made = mapped_writers(monkeypatch)
    monkeypatch.setattr(layout, "resolve_tensor_name", lambda load, loader: None)
    (out,) = _merge_in_process(recipe_dict(trio["target"], trio["grpo"], trio["sft"]), tmp_path, "out")
    assert made == []
    assert file_hashes(out) == file_hashes(reference)


def test_reserved_outputs_are_adopted_and_leave_nothing_behind(trio, tmp_path):
    import yaml

    from mergekit_reasoning.executor import stream
    from mergekit_reasoning.executor.recipe import Recipe
    from mergekit_reasoning.executor.reserve import reserve
    from mergekit_reasoning.executor.run import MergeSettings

    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"], 0.7)
    (reference,) = _merge_in_process(recipe, tmp_path, "reference")
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(recipe))
    outs = [tmp_path / "sweep" / "a", tmp_path / "sweep" / "b"]
    outs[0].parent.mkdir()
    reservation = reserve(path, outs, 5 * 10**9, budget=1 << 30)
    assert len([p for p in outs[0].parent.iterdir() if ".reserved-" in p.name]) == 2
    options = MergeSettings().mergekit_options()
    stream.merge(Recipe.read(path).check(), outs, options, lambdas=[0.7, 0.7], reservation=reservation)
    reservation.release()
    assert sorted(p.name for p in outs[0].parent.iterdir()) == ["a", "b"]
    for out in outs:
        assert file_hashes(out) == file_hashes(reference)


def test_a_folder_that_cannot_be_mapped_gets_mergekits_writer(trio, tmp_path, monkeypatch, caplog):
    """Some network and FUSE file systems refuse shared writable mappings: same files, one warning."""
    import errno

    from mergekit_reasoning.executor import shard_writer

    recipe = recipe_dict(trio["target"], trio["grpo"], trio["sft"], 0.7)
    reference = _merge_in_process(recipe, tmp_path, "reference", lambdas=[0.7, 1.0], shard="20K")

    def refuse(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(shard_writer.mmap, "mmap", refuse)
    outs = _merge_in_process(recipe, tmp_path, "unmappable", lambdas=[0.7, 1.0], shard="20K")
    assert "cannot map the output files" in caplog.text
    for out, ref in zip(outs, reference):
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
        assert file_hashes(out) == file_hashes(ref)
        assert json.loads((out / "reasoning_merge.json").read_text())["outputs"] == file_hashes(ref)


def test_a_full_disk_is_one_line_before_anything_is_written(trio, tmp_path, monkeypatch):
    import errno

    from mergekit_reasoning.core.errors import RecipeError
    from mergekit_reasoning.executor import shard_writer

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard_writer.os, "posix_fallocate", full)
    with pytest.raises(RecipeError, match=r"^no room for the output in .*: No space left on device$"):
        _merge_in_process(recipe_dict(trio["target"], trio["grpo"], trio["sft"]), tmp_path, "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.yml"]
