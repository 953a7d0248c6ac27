"""λ sweep: merge target + λ·(GRPO − SFT) for each λ with the project's merge method, then score.

All missing λ values are merged in one pass over the inputs. Resumable: a merge
folder counts as done only once its `.merge-complete` marker is written (merges
go to a temporary folder first), and scores are reused per unit from the run's
cache, so rerunning after an interruption redoes nothing finished.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, Union

from .errors import BenchError
from .identity import check_model

MARKER = ".merge-complete"


def lambda_label(lam: float) -> str:
    return f"lambda={lam:g}"


def merge_config(target: str, sft: str, grpo: str, lam: float, dtype: str = "bfloat16") -> dict:
    """The reasoning_vector recipe for one λ."""
    return {
        "merge_method": "reasoning_vector",
        "base_model": str(target),
        "models": [
            {"model": str(grpo), "parameters": {"role": "grpo"}},
            {"model": str(sft), "parameters": {"role": "sft"}},
        ],
        "parameters": {"lambda": float(lam)},
        "dtype": dtype,
        "out_dtype": dtype,
    }


def merge_lambdas(target: str, sft: str, grpo: str, lams, out_root: Path, dtype: str = "bfloat16") -> Dict[float, Path]:
    """The merged folder of every λ, merging the unfinished ones in a single pass.

    The project's streaming executor reads the three models once and writes one
    model per missing λ, each bitwise identical to a merge of that λ alone.
    """
    out_root = Path(out_root)
    folders = {lam: out_root / lambda_label(lam) for lam in lams}
    missing = []
    for lam, folder in folders.items():
        marker = folder / MARKER
        finished = marker.is_file() and json.loads(marker.read_text()).get("config") == merge_config(target, sft, grpo, lam, dtype)
        if not finished:
            missing.append(lam)
            shutil.rmtree(folder.with_name(folder.name + ".partial"), ignore_errors=True)
    if not missing:
        return folders
    import yaml
    from mergekit.merge import MergeOptions

    from mergekit_reasoning.merge import stream
    from mergekit_reasoning.errors import RecipeError
    from mergekit_reasoning.merge.recipe import check_recipe, parse_recipe

    text = yaml.safe_dump(merge_config(target, sft, grpo, 1.0, dtype), sort_keys=False)
    try:
        checked = check_recipe(text, parse_recipe(yaml.safe_load(text), source="λ sweep"))
        stream.merge(checked, [folders[lam] for lam in missing], MergeOptions(quiet=True), lambdas=missing, overwrite=True)
    except RecipeError as exc:
        raise BenchError(f"merge for λ={', '.join(f'{lam:g}' for lam in missing)} failed: {exc.message}") from exc
    for lam in missing:
        (folders[lam] / MARKER).write_text(json.dumps({"config": merge_config(target, sft, grpo, lam, dtype)}))
    return folders


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
    **bench_options,
) -> dict:
    """Merge each λ (λ = 0 is the target itself), score all of them, plot score against λ.

    `merge_dtype` is the dtype the merged models are written in. Extra keyword options
    go to `run_bench` (conditions, data_dir, limit, engine, dtype — the scoring dtype —,
    engine options such as tensor_parallel_size, ...); each λ is scored in its own process.
    """
    from .plots import plot_sweep
    from .runner import run_bench

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
    merged = merge_lambdas(target, sft, grpo, [lam for lam in lams if lam != 0], out / "merges", merge_dtype)
    models: Dict[str, str] = {lambda_label(lam): str(target if lam == 0 else merged[lam]) for lam in lams}
    baseline = bench_options.pop("baseline", None) or (lambda_label(0.0) if 0.0 in lams else None)
    document = run_bench(
        models, tasks, out_dir=out, baseline=baseline, plots=plots,
        extra={"sweep": {"lambdas": lams, "target": str(target), "sft": str(sft), "grpo": str(grpo), "merge_dtype": merge_dtype}},
        **bench_options,
    )
    if plots:
        plot_sweep(document, {lambda_label(l): l for l in lams}, out / "plots" / "sweep.png")
    return document
