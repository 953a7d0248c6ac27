"""Throughput of the bench harness against a plain lm-evaluation-harness run, same model, task and run.

Both sides score the same lm-eval task config on the same HFLM settings; the harness
adds data checks, model hashing, result caching, the table, the JSON and the plot.
Runs alternate (plain, harness, plain, harness, ...) after one warm-up so clocks,
caches and GPU clocks treat them alike; the harness run never reuses a cache.

Needs a CUDA GPU for the recorded figures (it runs on CPU with --shape tiny for a check):

    python benchmarks/bench_harness_throughput.py --data-dir ../shared/data \
        --task gsm8k_cot --limit 256 --batch-size 64 --repeats 3 --results benchmarks/RESULTS.md

With no --model it writes a random stand-in of Qwen2.5-1.5B's shape (28 layers, real
hidden sizes and vocabulary rows; the stand-in's small tokenizer makes prompts longer
in tokens than Qwen's and generations always run to --max-gen-toks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def plain_lm_eval(model: str, lm_task: str, args) -> float:
    """Seconds for lm-eval alone: HFLM + simple_evaluate on the same task config."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from mergekit_reasoning.bench.registry import TASKS_DIR

    start = time.perf_counter()
    lm = HFLM(pretrained=model, batch_size=args.batch_size, device=args.device, dtype="auto")
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": args.data_dir})
    lm_eval.simple_evaluate(
        model=lm,
        tasks=[lm_task],
        limit=args.limit,
        task_manager=manager,
        log_samples=False,
        gen_kwargs={"max_gen_toks": args.max_gen_toks},
        confirm_run_unsafe_code=True,
        apply_chat_template=False,
        fewshot_as_multiturn=False,
    )
    _sync()
    return time.perf_counter() - start


def harness(model: str, args) -> float:
    """Seconds for `run_bench` on the same model and task, into a fresh output folder."""
    from mergekit_reasoning.bench import run_bench

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_bench(
            {"model": model},
            args.task,
            out_dir=out,
            data_dir=args.data_dir,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
            max_gen_toks=args.max_gen_toks,
            progress=False,
        )
        _sync()
        return time.perf_counter() - start


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder (default: a random stand-in of --shape)")
    p.add_argument("--shape", default="qwen2.5-1.5b", help="stand-in shape: qwen2.5-1.5b or tiny")
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--task", default="gsm8k_cot")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-gen-toks", type=int, default=256)
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", help="append a markdown section to this file (e.g. benchmarks/RESULTS.md)")
    args = p.parse_args()

    import torch

    from mergekit_reasoning.bench.registry import lm_eval_name

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = tempfile.mkdtemp(prefix="mkr-throughput-")
    # A cold file-hash cache: the first harness run pays for hashing the model once,
    # as a first scoring of a model not written by our merge does; later runs reuse it.
    os.environ["MERGEKIT_REASONING_CACHE"] = str(Path(work) / "hash-cache")
    model = args.model
    if model is None:
        from mergekit_reasoning.testing.standins import write_standin

        model = str(write_standin(Path(work) / "standin", shape=args.shape, num_layers=args.layers, seed=0))
    lm_task = lm_eval_name(args.task)

    plain_lm_eval(model, lm_task, argparse.Namespace(**{**vars(args), "limit": min(args.limit, 8)}))  # warm-up
    plain, ours = [], []
    for _ in range(args.repeats):
        plain.append(plain_lm_eval(model, lm_task, args))
        ours.append(harness(model, args))
    p_med, o_med = statistics.median(plain), statistics.median(ours)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    summary = {
        "device": device,
        "model": args.model or f"stand-in {args.shape}, {args.layers} layers",
        "task": args.task,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "max_gen_toks": args.max_gen_toks,
        "plain_lm_eval_s": plain,
        "harness_s": ours,
        "plain_samples_per_s": args.limit / p_med,
        "harness_samples_per_s": args.limit / o_med,
        "overhead_pct": 100 * (o_med - p_med) / p_med,
    }
    print(json.dumps(summary, indent=1))
    if args.results:
        lines = [
            f"\n## Harness throughput vs plain lm-eval ({time.strftime('%Y-%m-%d')})\n",
            f"Device: {device}. Model: {summary['model']}. Task: {args.task}, limit {args.limit}, "
            f"batch {args.batch_size}, max_gen_toks {args.max_gen_toks}, {args.repeats} alternating repeats "
            "(medians; each run includes model loading).\n",
            "| run | seconds (each repeat) | median s | samples/s |",
            "|---|---|---|---|",
            f"| plain lm-eval | {', '.join(f'{x:.1f}' for x in plain)} | {p_med:.1f} | {summary['plain_samples_per_s']:.2f} |",
            f"| mergekit-reasoning bench | {', '.join(f'{x:.1f}' for x in ours)} | {o_med:.1f} | {summary['harness_samples_per_s']:.2f} |",
            f"\nHarness overhead: {summary['overhead_pct']:+.1f} % (medians). The first harness run also hashes "
            "the model's files once (a cold cache); later runs, and models written by `mergekit-reasoning merge`, "
            "reuse the hashes.\n",
        ]
        with open(args.results, "a") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
