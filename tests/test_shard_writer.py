"""The mapped writer: mergekit's TensorWriter's bytes, hashed while written, files reserved ahead."""

import hashlib
import random
from pathlib import Path

import pytest
import torch
import yaml
from mergekit.io.tensor_writer import TensorWriter
from safetensors.torch import save, save_file

from mergekit_reasoning.executor.reserve import Reservation, predicted_shard_sizes, reserve
from mergekit_reasoning.executor.shard_writer import Entry, MappedShards, header, split_shards

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
NAMES = [
    "a",
    "b.weight",
    "model.layers.10.x",
    "model.layers.2.x",
    'quote"back\\slash',
    "ctl\x01\x1f\n\t",
    "é-ünï",
    "\u2028sep",
    "z" * 300,
]


def random_tensors(seed: int, count: int) -> dict:
    rng = random.Random(seed)
    names = rng.sample(NAMES, min(count, len(NAMES))) + [f"t{i}" for i in range(max(0, count - len(NAMES)))]
    tensors = {}
    for name in names:
        shape = tuple(rng.choice([0, 1, 3, 17]) for _ in range(rng.choice([0, 1, 2])))
        dtype = rng.choice(DTYPES)
        tensors[name] = (torch.randn(shape, generator=torch.Generator().manual_seed(rng.randrange(1 << 30))) * 100).to(
            dtype
        )
    return tensors


def write_mapped(folder: Path, tensors: dict, max_shard_size: int = 0, order=None, reserved=()) -> MappedShards:
    entries = [Entry(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    with MappedShards(folder, entries, max_shard_size, "0.1.5", reserved=reserved) as shards:
        for name in order or shards.write_order():
            shards.view(name).copy_(tensors[name])
            shards.finished(name)
    return shards


def write_stock(folder: Path, tensors: dict, max_shard_size: int = 0) -> None:
    writer = TensorWriter(str(folder), max_shard_size=max_shard_size or 1 << 62, safe_serialization=True)
    for name, tensor in tensors.items():
        writer.save_tensor(name, tensor)
    writer.finalize()


def folder_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("seed", range(12))
def test_header_is_the_one_safetensors_writes(seed):
    tensors = random_tensors(seed, 1 + seed)
    head, _ = header([Entry(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()])
    written = save(tensors, metadata={"format": "pt"})
    assert written[: len(head)] == head


@pytest.mark.parametrize("seed", range(6))
def test_one_shard_is_byte_for_byte_save_file(seed, tmp_path):
    tensors = random_tensors(100 + seed, 8)
    (tmp_path / "mapped").mkdir()
    shards = write_mapped(tmp_path / "mapped", tensors)
    save_file(tensors, tmp_path / "stock.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "mapped" / "model.safetensors").read_bytes() == (tmp_path / "stock.safetensors").read_bytes()
    assert shards.digests == {
        "model.safetensors": hashlib.sha256((tmp_path / "stock.safetensors").read_bytes()).hexdigest()
    }


@pytest.mark.parametrize("max_shard_size", [1, 40, 200, 10_000])
def test_shards_and_index_are_byte_for_byte_mergekits(max_shard_size, tmp_path):
    tensors = random_tensors(7, 14)
    (tmp_path / "mapped").mkdir()
    shards = write_mapped(tmp_path / "mapped", tensors, max_shard_size)
    write_stock(tmp_path / "stock", tensors, max_shard_size)
    assert folder_bytes(tmp_path / "mapped") == folder_bytes(tmp_path / "stock")
    assert shards.digests == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "stock").glob("*.safetensors")
    }


def test_split_follows_save_order_like_tensorwriter():
    entries = [Entry(f"t{i}", torch.float32, (n,)) for i, n in enumerate([5, 5, 1, 9, 0, 3])]
    assert [[e.name for e in s] for s in split_shards(entries, 40)] == [["t0", "t1"], ["t2", "t3", "t4"], ["t5"]]
    assert len(split_shards(entries, 0)) == 1  # 0: no limit, as mergekit's writer


def test_the_hash_waits_for_every_tensor_in_any_order(tmp_path):
    tensors = random_tensors(3, 9)
    order = list(reversed(list(tensors)))  # last in the file first
    shards = write_mapped(tmp_path, tensors, order=order)
    assert (
        shards.digests["model.safetensors"] == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    )


def test_a_failure_inside_writes_no_index_and_no_digest(tmp_path):
    tensors = random_tensors(4, 12)
    entries = [Entry(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with pytest.raises(RuntimeError, match="kernel failed"):
        with MappedShards(tmp_path, entries, 64, "0.1.5") as shards:
            shards.view(entries[0].name).copy_(tensors[entries[0].name])
            raise RuntimeError("kernel failed")
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert shards.digests == {}


def test_an_unfinished_shard_is_never_given_a_digest(tmp_path):
    entries = [Entry("a", torch.float32, (4,)), Entry("b", torch.float32, (4,))]
    with pytest.raises(RuntimeError, match="closed before every tensor"):
        with MappedShards(tmp_path, entries, 0, "0.1.5") as shards:
            shards.finished("b")  # "a" never finished


def tiny_safetensors(folder: Path, tensors: dict, shard_size: int = 0) -> None:
    folder.mkdir(parents=True)
    write_stock(folder, tensors, shard_size)


def recipe_for(tmp_path: Path, target: Path, dtype: str = "bfloat16") -> Path:
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump({"merge_method": "reasoning_vector", "base_model": str(target), "dtype": dtype}))
    return path


@pytest.mark.parametrize("shard_size", [0, 300])
def test_prediction_matches_the_layout_of_the_targets_own_tensors(shard_size, tmp_path):
    tensors = {f"w{i}": torch.zeros(7 * (i + 1), dtype=torch.bfloat16) for i in range(8)}
    tiny_safetensors(tmp_path / "target", tensors, shard_size)
    predicted = predicted_shard_sizes(recipe_for(tmp_path, tmp_path / "target"), shard_size)
    entries = [Entry(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    data = [sum(e.nbytes for e in shard) for shard in split_shards(entries, shard_size)]
    assert len(predicted) == len(data)
    assert all(p >= d for p, d in zip(predicted, data))  # data plus a header-sized allowance


def test_reserved_files_of_any_size_give_the_same_bytes_and_vanish(tmp_path):
    tensors = random_tensors(9, 10)
    target = tmp_path / "target"
    tiny_safetensors(target, tensors)
    for guess in (1, 10**6):  # the writer shrinks or grows what was reserved
        recipe = tmp_path / "r.yml"
        recipe.write_text(yaml.safe_dump({"base_model": str(target)}))
        out = tmp_path / f"out{guess}"
        reservation = reserve(recipe, [out], guess, budget=1 << 30)
        assert reservation is not None
        reserved = sorted(p.name for p in tmp_path.iterdir() if ".reserved-" in p.name)
        assert reserved and all(name.startswith(f".out{guess}.reserved-") for name in reserved)
        out.mkdir()
        write_mapped(out, tensors, reserved=reservation.take(0))
        reservation.release()
        assert (out / "model.safetensors").read_bytes() == (target / "model.safetensors").read_bytes()
        assert not [p for p in tmp_path.iterdir() if ".reserved-" in p.name]


def test_spare_reserved_files_are_removed(tmp_path):
    tensors = {"a": torch.ones(3)}
    reservation = Reservation([[]], budget=0)
    from mergekit_reasoning.executor.reserve import _create

    spares = [_create(tmp_path / ".x.reserved-1-0", 4096), _create(tmp_path / ".x.reserved-1-1", 4096)]
    (tmp_path / "out").mkdir()
    write_mapped(tmp_path / "out", tensors, reserved=spares)  # one shard: the second file is spare
    reservation.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _interrupt_on_call(real, number):
    """`real`, except that its `number`th call raises KeyboardInterrupt (a Ctrl-C or SIGTERM there)."""
    calls = []

    def call(*args, **kwargs):
        calls.append(args)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return call


@pytest.mark.parametrize("where", ["split_shards", "rename"])
def test_a_writer_interrupted_before_it_adopts_its_reserved_files_leaves_none(where, tmp_path, monkeypatch):
    """Taken files are a writer's own only once renamed into its folder: a signal in between (while
    it plans its shards, seen under SIGTERM in the suite; or between two renames) left
    `.out.reserved-*` files beside the output."""
    import os

    from mergekit_reasoning.executor import shard_writer

    tensors = {f"w{i}": torch.ones(64) for i in range(6)}
    tiny_safetensors(tmp_path / "target", tensors, 600)
    reservation = reserve(recipe_for(tmp_path, tmp_path / "target", "float32"), [tmp_path / "out"], 600, budget=1 << 30)
    assert len([p for p in tmp_path.iterdir() if ".reserved-" in p.name]) == 3
    (tmp_path / "out").mkdir()
    if where == "rename":
        monkeypatch.setattr(shard_writer.os, "rename", _interrupt_on_call(os.rename, 2))
    else:
        monkeypatch.setattr(shard_writer, "split_shards", _interrupt_on_call(shard_writer.split_shards, 1))
    with pytest.raises(KeyboardInterrupt):
        write_mapped(tmp_path / "out", tensors, 600, reserved=reservation.take(0))
    monkeypatch.undo()
    reservation.release()
    assert not [p.name for p in tmp_path.iterdir() if ".reserved-" in p.name]


def test_an_interrupted_reservation_leaves_no_files(tmp_path, monkeypatch):
    from mergekit_reasoning.executor import reserve as reserving

    tiny_safetensors(tmp_path / "target", {f"w{i}": torch.ones(64) for i in range(6)}, 600)
    monkeypatch.setattr(reserving, "_create", _interrupt_on_call(reserving._create, 3))
    with pytest.raises(KeyboardInterrupt):
        reserve(recipe_for(tmp_path, tmp_path / "target", "float32"), [tmp_path / "out"], 600, budget=1 << 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml", "target"]


def with_data(header: bytes, data_bytes: int) -> bytes:
    return len(header).to_bytes(8, "little") + header + bytes(data_bytes)


@pytest.mark.parametrize(
    "content",
    [
        b"",  # empty
        (1 << 40).to_bytes(8, "little") + b"{}",  # a header length far past the file
        (5).to_bytes(8, "little") + b"[1,2]",  # not an object
        (20).to_bytes(8, "little") + b'{"w":{"dtype":"XX"}}',  # nonsense fields
        (2).to_bytes(8, "little") + b"{",  # truncated
        # headers that claim a terabyte in a file that holds 4 bytes of data
        with_data(b'{"w":{"dtype":"F32","shape":[262144,1048576],"data_offsets":[0,4]}}', 4),
        with_data(b'{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}', 4),
        with_data(b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}', 4),
    ],
    ids=[
        "empty",
        "header past the file",
        "not an object",
        "nonsense fields",
        "truncated",
        "terabyte shape",
        "terabyte offsets",
        "reversed offsets",
    ],
)
def test_a_hostile_target_header_means_no_reservation_and_no_files(content, tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "model.safetensors").write_bytes(content)
    assert reserve(recipe_for(tmp_path, tmp_path / "target"), [tmp_path / "out"], 0, budget=1 << 30) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml", "target"]


@pytest.mark.parametrize("text", ["", "- a list", "base_model: 3", "base_model: /no/such/folder", "{{{"])
def test_a_bad_recipe_means_no_reservation(text, tmp_path):
    (tmp_path / "r.yml").write_text(text)
    assert reserve(tmp_path / "r.yml", [tmp_path / "out"], 0, budget=1 << 30) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yml"]


def test_no_reservation_without_an_output_parent_or_budget(tmp_path):
    target = tmp_path / "target"
    tiny_safetensors(target, {"a": torch.ones(4)})
    recipe = recipe_for(tmp_path, target)
    assert reserve(recipe, [tmp_path / "out"], 0, budget=0) is None
    reservation = reserve(recipe, [tmp_path / "missing" / "out"], 0, budget=1 << 30)
    assert reservation is not None and reservation.take(0) == []
    reservation.release()
    assert not (tmp_path / "missing").exists()
