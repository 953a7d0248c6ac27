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

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.hashing import cache_root
from mergekit_reasoning.core.offline import go_offline_if_unreachable
from mergekit_reasoning.core.staging import check_output_name, refuse_non_empty, refuse_output_over_inputs
from mergekit_reasoning.executor.readahead import advise, available_memory, recipe_model_dirs, reclaimable_memory
from mergekit_reasoning.executor.recipe import Recipe
from mergekit_reasoning.executor.reserve import reserve
from mergekit_reasoning.method.roles import lambda_problem

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

        try:
            size = self.out_shard_size if isinstance(self.out_shard_size, int) else parse_kmb(self.out_shard_size)
        except (ValueError, TypeError, IndexError, KeyError):
            size = None
        if not isinstance(size, int) or size <= 0:
            raise RecipeError(
                f"--out-shard-size {self.out_shard_size!r}: give a positive count such as 5B, 500M or 1000000"
            )
        if self.cuda or self.read_to_gpu:
            import torch

            if not torch.cuda.is_available():
                raise RecipeError("--cuda: no CUDA device is available here (torch sees none); merge without --cuda")
        return MergeOptions(
            cuda=self.cuda or self.read_to_gpu,
            read_to_gpu=self.read_to_gpu,
            out_shard_size=size,
            quiet=self.quiet,
            lora_merge_cache=self.lora_folder(),
        )


def lambda_text(lam: float) -> str:
    """λ as folder names and labels write it: short (`0.5`, `-1`), and never the same text
    for two different values (`{:g}` keeps 6 digits, so 0.1234567 gets all of them)."""
    short = f"{lam:g}"
    return short if float(short) == lam else repr(float(lam))


def check_lambdas(lambdas: Sequence[float]) -> None:
    """Swept λ values must be finite numbers, each given once."""
    seen = set()
    for lam in lambdas:
        problem = lambda_problem(lam)
        if problem is not None:
            raise RecipeError(problem)
        if float(lam) in seen:
            raise RecipeError(f"lambda {lambda_text(lam)} is given twice")
        seen.add(float(lam))


def sweep_folders(out: Path, lambdas: Optional[Sequence[float]]) -> List[Path]:
    """The output folders of a merge: `out` itself, or `out/lambda_<λ>` per swept λ."""
    if not lambdas:
        return [Path(out)]
    check_lambdas(lambdas)
    return [Path(out) / f"lambda_{lambda_text(lam)}" for lam in lambdas]


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
    if lambdas is not None:
        check_lambdas(lambdas)
    local_inputs = recipe_model_dirs(recipe)
    for out in outs:  # before anything is read or reserved
        check_output_name(out)
        refuse_output_over_inputs(out, map(Path, local_inputs))
        refuse_non_empty(out, overwrite)
    budget = min(reclaimable_memory() // 5, RESERVE_CAP)
    reservation = reserve(recipe, outs, settings.shard_bytes(), budget=budget)
    try:
        go_offline_if_unreachable(echo)
        advise(local_inputs, budget_bytes=available_memory() // 4)
        from mergekit.io.tasks import LoaderCache

        from mergekit_reasoning.executor import stream

        options = settings.mergekit_options()
        LoaderCache().setup(options=options)  # LoRA donors are checked as merged, as they are read
        checked = recipe.check()
        for note in checked.notes():
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
