"""Ask the kernel to start reading a recipe's local weights before Python is ready.

Importing mergekit's stack takes seconds of CPU; reading cold weights from disk
takes seconds of I/O. `posix_fadvise(WILLNEED)` lets the two overlap at no CPU
cost. Only a budget of bytes is advised, so inputs larger than memory do not
evict each other; hub models and unsupported platforms are skipped quietly.
"""

import os
from pathlib import Path
from typing import Iterable, Union

from mergekit_reasoning.executor.recipe import Recipe, model_dir


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


def recipe_model_dirs(recipe: Union[Recipe, Path, None]) -> list:
    """Local folders a recipe names, read from its YAML without importing mergekit
    ([] for a recipe that cannot be read: its check reports that properly)."""
    recipe = recipe if isinstance(recipe, Recipe) or recipe is None else Recipe.peek(recipe)
    return [model_dir(ref) for ref in recipe.model_refs()] if recipe is not None else []


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
