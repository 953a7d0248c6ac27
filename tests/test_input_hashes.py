"""The inputs' manifest digests come from the bytes the merge reads, each input byte once."""

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from blake3 import blake3
from conftest import recipe_dict

from mergekit_reasoning.core import hashing
from mergekit_reasoning.executor import input_hashes, run
from mergekit_reasoning.executor.recipe import Recipe
from mergekit_reasoning.testing.standins import write_trio


def test_a_range_hashed_before_its_load_returns_does_not_hang_the_merge(sharded, monkeypatch):
    """A small range can be hashed before `loaded` has registered its callback; the callback then
    runs in the merge's own thread, which held the hasher's lock: the merge hung for good (seen in a
    CI run of the suite). A pool that finishes each range at once makes it happen every time."""
    from concurrent.futures import Future

    class AtOnce:
        def __init__(self, **_):
            pass

        def submit(self, function, *args):
            done = Future()
            done.set_result(function(*args))
            return done

        def shutdown(self, **_):
            pass

    monkeypatch.setattr(input_hashes, "ThreadPoolExecutor", AtOnce)
    path = next(sharded["sft"].glob("*.safetensors")).resolve()
    names = list(hashing.byte_ranges(path)[1])
    hashes = input_hashes.InputHashes([path], [(path, name) for name in names], backlog=0)
    merge = threading.Thread(target=lambda: [hashes.loaded(path, name) for name in names], daemon=True)
    merge.start()
    merge.join(10)
    assert not merge.is_alive(), "the merge's thread hung in loaded()"
    hashes.wait_for_hasher()  # nothing behind
    assert hashes.digests()[path] == reference_ranges_digest(path)
    hashes.close()


def reference_ranges_digest(path: Path, scheme: str = "blake3-ranges:") -> str:
    """Independently: BLAKE3 (or, for the older scheme, SHA-256) over the same hash of the
    header, of each tensor's bytes and of any gap, in file order."""
    hasher = blake3 if scheme == "blake3-ranges:" else hashlib.sha256
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    start = 8 + length
    cuts = sorted(
        {0, start, len(data)} | {start + o for k, v in header.items() if k != "__metadata__" for o in v["data_offsets"]}
    )
    parts = [hasher(data[a:b]).digest() for a, b in zip(cuts, cuts[1:]) if b > a]
    return scheme + hasher(b"".join(parts)).hexdigest()


@pytest.fixture
def sharded(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEKIT_REASONING_CACHE", str(tmp_path / "cache"))  # nothing hashed yet
    models = write_trio(tmp_path / "models", num_layers=6, tie_word_embeddings=False, max_shard_bytes=150_000)
    return models


def test_weights_are_hashed_from_the_merges_own_reads_once(sharded, tmp_path, monkeypatch):
    read_whole = []
    for name in ("sha256_file", "ranges_digest"):
        real = getattr(hashing, name)

        def spy(path, _real=real, _name=name):
            read_whole.append((_name, Path(path).name))
            return _real(path)

        monkeypatch.setattr(hashing, name, spy)
    totals = []
    real_digests = input_hashes.InputHashes.digests

    def digests(self):
        found = real_digests(self)
        totals.append((self.hashed_bytes, sum(os.path.getsize(p) for p in found)))
        return found

    monkeypatch.setattr(input_hashes.InputHashes, "digests", digests)
    recipe = Recipe.from_data(recipe_dict(sharded["target"], sharded["grpo"], sharded["sft"], 0.5))
    (out,) = run.merge(recipe, [tmp_path / "out"])
    assert not [name for kind, name in read_whole if name.endswith(".safetensors")]  # no second read of a weight
    ((hashed, size),) = totals
    assert hashed == size  # every byte of every input weight file hashed exactly once
    manifest = json.loads((out / "reasoning_merge.json").read_text())
    weights = 0
    for entry in manifest["inputs"]:
        folder = sharded[entry["role"]]
        for name, digest in entry["files"].items():
            if name.endswith(".safetensors"):
                weights += 1
                assert digest == reference_ranges_digest(folder / name) == hashing.ranges_digest(folder / name)
            else:
                assert digest == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert weights == sum(len(list(m.glob("*.safetensors"))) for m in sharded.values()) > 3


def test_a_second_merge_takes_the_digests_from_the_cache(sharded, tmp_path):
    recipe = Recipe.from_data(recipe_dict(sharded["target"], sharded["grpo"], sharded["sft"], 0.5))
    run.merge(recipe, [tmp_path / "one"])
    for model in sharded.values():
        assert all(hashing.known_without_reading(p) for p in model.glob("*.safetensors"))
    run.merge(
        Recipe.from_data(recipe_dict(sharded["target"], sharded["grpo"], sharded["sft"], 0.5)), [tmp_path / "two"]
    )
    one, two = (json.loads((tmp_path / d / "reasoning_merge.json").read_text()) for d in ("one", "two"))
    assert one["inputs"] == two["inputs"] and one["key"] == two["key"]


def test_hub_blobs_are_named_by_their_digest_and_said_so(trio, tmp_path, monkeypatch):
    """A model in a Hugging Face cache: snapshot files link to blobs named by their SHA-256."""
    monkeypatch.setenv("MERGEKIT_REASONING_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "hub" / "models--org--target"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in trio["target"].iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("../../blobs") / digest)
    read = []
    real = hashing.ranges_digest
    monkeypatch.setattr(hashing, "ranges_digest", lambda p: read.append(p) or real(p))
    (out,) = run.merge(Recipe.from_data(recipe_dict(snapshot, trio["grpo"], trio["sft"])), [tmp_path / "out"])
    target = next(e for e in json.loads((out / "reasoning_merge.json").read_text())["inputs"] if e["role"] == "target")
    digest = hashlib.sha256((trio["target"] / "model.safetensors").read_bytes()).hexdigest()
    assert target["files"]["model.safetensors"] == digest
    assert "model.safetensors" in target["hub_blob_names"]
    assert not [p for p in read if "blobs" in str(Path(p).resolve())]


@pytest.mark.parametrize("older", ["file sha256", "sha256 ranges"])
def test_older_manifests_still_verify(sharded, tmp_path, older):
    from mergekit_reasoning.executor.manifest import input_problems

    (out,) = run.merge(
        Recipe.from_data(recipe_dict(sharded["target"], sharded["grpo"], sharded["sft"])), [tmp_path / "out"]
    )
    manifest = json.loads((out / "reasoning_merge.json").read_text())
    for entry in manifest["inputs"]:  # as earlier versions wrote them
        folder = sharded[entry["role"]]
        for name in entry["files"]:
            if older == "sha256 ranges" and name.endswith(".safetensors"):
                entry["files"][name] = reference_ranges_digest(folder / name, "ranges:")
            else:
                entry["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert input_problems(manifest, rehash=True)[0] == []
    entry = manifest["inputs"][0]
    weight = next(n for n in entry["files"] if n.endswith(".safetensors"))
    entry["files"][weight] = entry["files"][weight][:-8] + "00000000"
    assert len(input_problems(manifest, rehash=True)[0]) == 1


def test_the_merge_waits_for_a_hasher_that_falls_behind(sharded, monkeypatch):
    """Loads stop running ahead of the hasher by more than its backlog, so the pages they
    read are still cached when hashed (no second read from disk), and go on once it catches up."""
    release, real = threading.Event(), input_hashes.hash_range
    monkeypatch.setattr(input_hashes, "hash_range", lambda *a: release.wait(30) and real(*a))
    path = next(sharded["sft"].glob("*.safetensors")).resolve()
    names = list(hashing.byte_ranges(path)[1])
    hashes = input_hashes.InputHashes([path], [(path, name) for name in names], backlog=0)
    try:
        hashes.loaded(path, names[0])
        waiting = threading.Thread(target=hashes.wait_for_hasher)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()  # held while a loaded range waits to be hashed
        release.set()
        waiting.join(30)
        assert not waiting.is_alive()
        assert hashes.digests()[path] == reference_ranges_digest(path)
    finally:
        release.set()
        hashes.close()
