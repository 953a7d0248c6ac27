"""Benchmark harness: score labelled models on GSM8K, HumanEval, SciQ and BBH.

lm-evaluation-harness is the scoring engine (the `[bench]` extra); this package
supplies task configs that read the hub or local copies, a sandboxed HumanEval
metric, study conditions, λ sweeps, and the table, results file and plots.
Importing it is cheap: lm_eval, torch and matplotlib load only when a run starts.
"""

from __future__ import annotations

__all__ = ["run_bench", "run_sweep", "BenchError"]

from mergekit_reasoning.core.errors import BenchError


def __getattr__(name):
    if name == "run_bench":
        from mergekit_reasoning.bench.runner import run_bench

        return run_bench
    if name == "run_sweep":
        from mergekit_reasoning.bench.sweep import run_sweep

        return run_sweep
    raise AttributeError(name)
