"""The one way in to a merge: `merge(recipe, outs, settings)`.

Every command that merges (`merge`, `regenerate`, `verify --remerge`, the bench
sweep, `reproduce`) comes here, so every one of them gets the fast path: the
output files are reserved and paged in on one core while mergekit is imported
on the other, local inputs are advised for read-ahead within a memory budget,
the recipe is checked once, and the streaming pass writes each output with its
manifest. Heavy imports (torch, mergekit) happen after the reservation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from mergekit_reasoning.core.hashing import cache_root
from mergekit_reasoning.core.offline import go_offline_if_unreachable
from mergekit_reasoning.executor.readahead import advise, available_memory, recipe_model_dirs, reclaimable_memory
from mergekit_reasoning.executor.recipe import Recipe
from mergekit_reasoning.executor.reserve import reserve

LOG = logging.getLogger(__name__)
RESERVE_CAP = 4 << 30  # bytes of output paged in ahead at most


@dataclass(frozen=True)
class MergeSettings:
    """How to merge, as `mergekit-reasoning merge`'s options say it."""

    cuda: bool = False
    read_to_gpu: bool = False
    out_shard_size: Union[str, int] = "5B"  # parameters per output shard, as mergekit reads it
    quiet: bool = True
    lora_merge_cache: Optional[str] = None  # where LoRA donors are merged into their models; None: the cache

    def lora_folder(self) -> str:
        return self.lora_merge_cache or str(cache_root() / "lora-merges")

    def shard_bytes(self) -> int:
        """The shard size as mergekit's parse_kmb reads it, without importing mergekit (0 if unreadable)."""
        if isinstance(self.out_shard_size, int):
            return self.out_shard_size
        units = {"K": 10**3, "M": 10**6, "B": 10**9}
        text = str(self.out_shard_size).strip().upper()
        try:
            return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)
        except ValueError:
            return 0

    def mergekit_options(self):
        from mergekit.common import parse_kmb
        from mergekit.options import MergeOptions

        size = self.out_shard_size if isinstance(self.out_shard_size, int) else parse_kmb(self.out_shard_size)
        return MergeOptions(
            cuda=self.cuda or self.read_to_gpu,
            read_to_gpu=self.read_to_gpu,
            out_shard_size=size,
            quiet=self.quiet,
            lora_merge_cache=self.lora_folder(),
        )


def sweep_folders(out: Path, lambdas: Optional[Sequence[float]]) -> List[Path]:
    """The output folders of a merge: `out` itself, or `out/lambda_<λ>` per swept λ."""
    return [Path(out) / f"lambda_{lam:g}" for lam in lambdas] if lambdas else [Path(out)]


def merge(
    recipe: Recipe,
    outs: Sequence[Path],
    settings: MergeSettings = MergeSettings(),
    *,
    lambdas: Optional[Sequence[float]] = None,
    overwrite: bool = False,
    inputs: Optional[List[Dict]] = None,
    echo: Callable[[str], None] = lambda line: None,
) -> List[Path]:
    """Merge `recipe` into `outs` (one folder per λ in `lambdas`, or one with the recipe's λ).

    `inputs` are the manifest's input entries when the caller has hashed them
    already (`regenerate`); otherwise they are hashed while the merge runs.
    `echo` receives the notes a user should see (the offline switch, policies).
    """
    outs = [Path(p) for p in outs]
    budget = min(reclaimable_memory() // 5, RESERVE_CAP)
    reservation = reserve(recipe, outs, settings.shard_bytes(), budget=budget)
    try:
        go_offline_if_unreachable(echo)
        advise(recipe_model_dirs(recipe), budget_bytes=available_memory() // 4)
        from mergekit.io.tasks import LoaderCache

        from mergekit_reasoning.executor import stream

        options = settings.mergekit_options()
        LoaderCache().setup(options=options)  # LoRA donors are checked as merged, as they are read
        checked = recipe.check()
        for note in checked.compatibility.notes():
            echo(f"warning: {note}")
        return stream.merge(
            checked,
            outs,
            options,
            lambdas=list(lambdas) if lambdas is not None else None,
            overwrite=overwrite,
            inputs=inputs,
            reservation=reservation,
        )
    finally:
        if reservation is not None:
            reservation.release()
