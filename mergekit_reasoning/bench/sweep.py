"""λ sweep: merge target + λ·(GRPO − SFT) for each λ with the project's merge method, then score.

Resumable: a merge folder counts as done only once its `.merge-complete` marker is
written (merges go to a temporary folder first), and scores are reused per unit
from the run's cache, so rerunning after an interruption redoes nothing finished.
"""

from __future__ import annotations

import json
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


def merge_lambda(target: str, sft: str, grpo: str, lam: float, out_dir: Path, dtype: str = "bfloat16") -> Path:
    """The merged model folder for λ, merging only if no finished merge is there."""
    out_dir = Path(out_dir)
    config = merge_config(target, sft, grpo, lam, dtype)
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("config") == config:
        return out_dir
    import mergekit_reasoning.method  # noqa: F401  registers reasoning_vector with mergekit
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        run_merge(MergeConfiguration.model_validate(config), str(partial), options=MergeOptions(quiet=True))
    except Exception as exc:
        raise BenchError(f"merge for λ={lam:g} failed: {type(exc).__name__}: {exc}") from exc
    (partial / MARKER).write_text(json.dumps({"config": config}))
    partial.rename(out_dir)
    return out_dir


def run_sweep(
    target: str,
    sft: str,
    grpo: str,
    lambdas: Iterable[float],
    tasks: Union[str, Iterable[str]] = ("gsm8k", "humaneval", "sciq", "bbh"),
    out_dir: Union[str, Path] = "bench-sweep",
    *,
    dtype: str = "bfloat16",
    plots: bool = True,
    **bench_options,
) -> dict:
    """Merge each λ (λ = 0 is the target itself), score all of them, plot score against λ.

    Extra keyword options go to `run_bench` (conditions, data_dir, limit, ...).
    """
    from .plots import plot_sweep
    from .runner import run_bench

    lams = sorted({float(x) for x in lambdas})
    if not lams:
        raise BenchError("no λ values given")
    for label, ref in (("target", target), ("sft", sft), ("grpo", grpo)):
        check_model(label, str(ref))
    out = Path(out_dir)
    models: Dict[str, str] = {}
    for lam in lams:
        path = target if lam == 0 else merge_lambda(target, sft, grpo, lam, out / "merges" / lambda_label(lam), dtype)
        models[lambda_label(lam)] = str(path)
    baseline = bench_options.pop("baseline", None) or (lambda_label(0.0) if 0.0 in lams else None)
    document = run_bench(
        models, tasks, out_dir=out, baseline=baseline, plots=plots,
        extra={"sweep": {"lambdas": lams, "target": str(target), "sft": str(sft), "grpo": str(grpo), "dtype": dtype}},
        **bench_options,
    )
    if plots:
        plot_sweep(document, {lambda_label(l): l for l in lams}, out / "plots" / "sweep.png")
    return document
