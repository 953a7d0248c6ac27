"""Ask the kernel to start reading a recipe's local weights before Python is ready.

Importing mergekit's stack takes seconds of CPU; reading cold weights from disk
takes seconds of I/O. `posix_fadvise(WILLNEED)` lets the two overlap at no CPU
cost. Only a budget of bytes is advised, so inputs larger than memory do not
evict each other; hub models and unsupported platforms are skipped quietly.
"""

import os
from pathlib import Path
from typing import Iterable


def advise(model_dirs: Iterable[str], budget_bytes: int) -> int:
    """Advise read-ahead for the safetensors shards under `model_dirs`; return bytes advised."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    advised = 0
    for folder in model_dirs:
        for shard in sorted(Path(folder).glob("*.safetensors")) if os.path.isdir(folder) else []:
            size = shard.stat().st_size
            length = min(size, budget_bytes - advised)
            if length <= 0:
                return advised
            fd = os.open(shard, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
            advised += length
    return advised


def recipe_model_dirs(recipe_path: Path) -> list:
    """Local folders a recipe names, read from its YAML without importing mergekit."""
    data = recipe_data(recipe_path)
    refs = [data.get("base_model")] + [m.get("model") for m in data.get("models") or [] if isinstance(m, dict)]
    return [model_dir(r) for r in refs if isinstance(r, str)]


def recipe_data(recipe_path: Path) -> dict:
    """A recipe's YAML as a mapping, or {} when it is unreadable (the recipe check reports it properly)."""
    import yaml

    try:
        data = yaml.safe_load(Path(recipe_path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def model_dir(ref: str) -> str:
    """The folder of a model reference, without its `@revision`."""
    return str(ref).split("@")[0]


def available_memory() -> int:
    """Free memory (pages no one holds, not reclaimable cache)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def reclaimable_memory() -> int:
    """What Linux could hand out without swapping (MemAvailable: free plus clean cache),
    or free memory where that is not known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return available_memory()
