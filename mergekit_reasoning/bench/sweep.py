"""λ sweep: merge target + λ·(GRPO − SFT) for each λ with the project's merge method, then score.

All missing λ values are merged in one pass over the inputs, by the executor's
one entry point. Resumable: a merge folder counts as done by the executor's one
rule (its manifest, written last; `executor.manifest.completed`) when that
manifest records this recipe and this λ, and scores are reused per unit from
the run's cache, so rerunning after an interruption redoes nothing finished.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

from mergekit_reasoning.bench.identity import check_model
from mergekit_reasoning.core.errors import BenchError, RecipeError
from mergekit_reasoning.executor.recipe import Recipe


def lambda_label(lam: float) -> str:
    return f"lambda={lam:g}"


def merge_lambdas(recipe: Recipe, lams, out_root: Path) -> Dict[float, Path]:
    """The merged folder of every λ, merging the unfinished ones in a single pass.

    The project's streaming executor reads the three models once and writes one
    model per missing λ, each bitwise identical to a merge of that λ alone.
    """
    from mergekit_reasoning.executor import manifest, run

    out_root = Path(out_root)
    folders = {lam: out_root / lambda_label(lam) for lam in lams}
    recipe_sha256 = hashlib.sha256(recipe.text.encode()).hexdigest()
    missing = []
    for lam, folder in folders.items():
        done = manifest.completed(folder)
        if done is None or done.get("recipe_sha256") != recipe_sha256 or done.get("lambda_override") != lam:
            missing.append(lam)
    if not missing:
        return folders
    try:
        run.merge(recipe, [folders[lam] for lam in missing], lambdas=missing, overwrite=True)
    except RecipeError as exc:
        raise BenchError(f"merge for λ={', '.join(f'{lam:g}' for lam in missing)} failed: {exc}") from exc
    return folders


def merged_models(recipe: Recipe, lams, out_root: Path, ray: Optional[str]) -> Dict[float, object]:
    """Each λ's model: merged here into `out_root` (one pass), or on a Ray cluster a merge that the
    node scoring it makes (cluster.NodeMerge), bitwise the same."""
    if ray is None:
        return {lam: str(folder) for lam, folder in merge_lambdas(recipe, lams, out_root).items()}
    from mergekit_reasoning.bench.cluster import NodeMerge

    return {lam: NodeMerge(recipe.text, lam, lambda_label(lam)) for lam in lams}


def run_sweep(
    target: str,
    sft: str,
    grpo: str,
    lambdas: Iterable[float],
    tasks: Union[str, Iterable[str]] = ("gsm8k", "humaneval", "sciq", "bbh"),
    out_dir: Union[str, Path] = "bench-sweep",
    *,
    merge_dtype: str = "bfloat16",
    plots: bool = True,
    ray: Optional[str] = None,
    **bench_options,
) -> dict:
    """Merge each λ (λ = 0 is the target itself), score all of them, plot score against λ.

    `merge_dtype` is the dtype the merged models are written in. Extra keyword options
    go to `run_bench` (conditions, data_dir, limit, engine, dtype — the scoring dtype —,
    engine options such as tensor_parallel_size, ...); each λ is scored in its own process.
    With `ray` (a cluster address), each λ is a Ray task that merges it on its node and scores it.
    """
    from mergekit_reasoning.bench.plots import plot_sweep
    from mergekit_reasoning.bench.runner import run_bench

    lams = sorted({float(x) for x in lambdas})
    if not lams:
        raise BenchError("no λ values given")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BenchError(
            "a λ sweep cannot run under `accelerate launch` (every rank would merge); "
            "use --engine vllm --data-parallel-size N, or merge once and score the folders with --model"
        )
    for label, ref in (("target", target), ("sft", sft), ("grpo", grpo)):
        check_model(label, str(ref))
    out = Path(out_dir)
    recipe = Recipe.for_pair(target, grpo, sft, 1.0, merge_dtype)
    merged = merged_models(recipe, [lam for lam in lams if lam != 0], out / "merges", ray)
    models = {lambda_label(lam): str(target) if lam == 0 else merged[lam] for lam in lams}
    baseline = bench_options.pop("baseline", None) or (lambda_label(0.0) if 0.0 in lams else None)
    document = run_bench(
        models,
        tasks,
        out_dir=out,
        baseline=baseline,
        plots=plots,
        ray=ray,
        extra={
            "sweep": {
                "lambdas": lams,
                "target": str(target),
                "sft": str(sft),
                "grpo": str(grpo),
                "merge_dtype": merge_dtype,
            }
        },
        **bench_options,
    )
    if plots:
        plot_sweep(document, {lambda_label(lam): lam for lam in lams}, out / "plots" / "sweep.png")
    return document
