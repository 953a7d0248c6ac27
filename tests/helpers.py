"""Reading merged folders back, for assertions."""

import hashlib
from pathlib import Path
from typing import Dict

import torch
from safetensors import safe_open


def read_tensors(folder: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of a model folder (or of one weights file), safetensors or pickled."""
    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    out = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                out.update({name: handle.get_tensor(name) for name in handle.keys()})
        else:
            out.update(torch.load(file, weights_only=True))
    return out


def pickled_copy(folder: Path, out: Path) -> Path:
    """`folder` with its safetensors weights rewritten as one pickled `pytorch_model.bin`."""
    out.mkdir(parents=True)
    for file in Path(folder).iterdir():
        if file.suffix != ".safetensors" and file.name != "model.safetensors.index.json":
            (out / file.name).write_bytes(file.read_bytes())
    torch.save(read_tensors(folder), out / "pytorch_model.bin")
    return out


def file_hashes(folder: Path) -> Dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).glob("*.safetensors"))}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns, so that -0.0 differs from 0.0 and NaN equals itself."""
    return tensor.contiguous().view(
        {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    )


def assert_bitwise_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(bits(a[name]), bits(b[name])), name
