"""Merge speed and memory against the raw safetensors floor and stock mergekit.

Builds bf16 stand-ins with Qwen2.5-1.5B's real shapes (or 7B's), then times, in
one run and each in a fresh process: the floor (a plain safetensors loop with
float32 arithmetic), stock mergekit `task_arithmetic` through `mergekit-yaml`,
this package's method through `mergekit-yaml`, and `mergekit-reasoning merge`
(the streaming executor), plus a λ sweep. Reports wall time, peak RSS and ratios
to the floor and to stock mergekit, as a markdown table. Each approach runs
`--repeats` times (best wall time kept), so the manifest's input hashes are
cached after the first run of `mergekit-reasoning merge`, as in steady use.

    python benchmarks/merge_speed.py --layers 4 [--shape qwen2.5-7b] [--cuda] [--sweep 4]
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _launch import MERGEKIT_REASONING, MERGEKIT_YAML, command

FLOOR = """
import sys, torch
from safetensors import safe_open
from safetensors.torch import save_file
target, grpo, sft, out, device = sys.argv[1:6]
merged = {}
with safe_open(target + "/model.safetensors", "pt") as t, safe_open(grpo + "/model.safetensors", "pt") as g, \\
        safe_open(sft + "/model.safetensors", "pt") as s:
    for name in t.keys():
        a = t.get_tensor(name).to(device, torch.float32)
        a += g.get_tensor(name).to(device, torch.float32) - s.get_tensor(name).to(device, torch.float32)
        merged[name] = a.to(torch.bfloat16).cpu()
save_file(merged, out + "/model.safetensors")
"""

# Run a command, then report its wall time and the peak RSS of its process tree.
MEASURE = """
import resource, subprocess, sys, time, json
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
if done.returncode:
    sys.exit(done.stderr[-2000:])
print(json.dumps({"wall": wall, "rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


REPEATS = 2


def measure(command):
    """Best wall time and largest peak RSS over REPEATS runs, each in a fresh process."""
    runs = []
    for _ in range(REPEATS):
        done = subprocess.run([sys.executable, "-c", MEASURE, *map(str, command)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"failed: {' '.join(map(str, command))}\n{done.stderr}")
        runs.append(json.loads(done.stdout))
    return {"wall": min(r["wall"] for r in runs), "rss_kb": max(r["rss_kb"] for r in runs)}


def recipe(models, method, path):
    from mergekit_reasoning.bench.sweep import merge_config

    if method == "task_arithmetic":
        data = {
            "merge_method": "task_arithmetic",
            "base_model": str(models["target"]),
            "models": [
                {"model": str(models["grpo"]), "parameters": {"weight": 1.0}},
                {"model": str(models["sft"]), "parameters": {"weight": -1.0}},
            ],
            "parameters": {"normalize": False},
            "dtype": "bfloat16",
            "out_dtype": "bfloat16",
        }
    else:
        data = merge_config(models["target"], models["sft"], models["grpo"], 1.0)
    path.write_text(yaml.safe_dump(data))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-1.5b", choices=["qwen2.5-1.5b", "qwen2.5-7b"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--cuda", action="store_true", help="also time the GPU paths")
    parser.add_argument("--sweep", type=int, default=4, help="λ values in the one-pass sweep")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="runs per approach; the best wall time is kept")
    args = parser.parse_args()
    global REPEATS
    REPEATS = args.repeats

    from mergekit_reasoning.standins import write_trio

    work = args.workdir or Path(tempfile.mkdtemp(prefix="merge-speed-"))
    os.environ["MERGEKIT_REASONING_CACHE"] = str(work / "hash-cache")  # private, starts empty
    stock_yaml, ours = command(MERGEKIT_YAML), command(MERGEKIT_REASONING)
    try:
        models = write_trio(work / "models", shape=args.shape, num_layers=args.layers, tokenizer=False)
        input_bytes = sum(f.stat().st_size for m in models.values() for f in m.glob("*.safetensors"))
        ta, rv = recipe(models, "task_arithmetic", work / "ta.yml"), recipe(models, "reasoning_vector", work / "rv.yml")

        def out(name):
            path = work / "out" / name
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            return path

        rows = []
        imports = {
            "torch + safetensors": measure([sys.executable, "-c", "import torch, safetensors.torch"]),
            "mergekit's stack": measure([sys.executable, "-c", "import mergekit.merge, mergekit.plan, mergekit.card"]),
        }
        devices = ["cpu"] + (["cuda"] if args.cuda else [])
        for device in devices:
            gpu = ["--cuda"] if device == "cuda" else []
            rows.append((f"floor: safetensors loop ({device})",
                         measure([sys.executable, "-c", FLOOR, models["target"], models["grpo"], models["sft"], out("floor"), device])))
            rows.append((f"stock mergekit-yaml task_arithmetic ({device})", measure([*stock_yaml, ta, out("ta"), "--quiet", *gpu])))
            rows.append((f"stock mergekit-yaml reasoning_vector ({device})", measure([*stock_yaml, rv, out("rv"), "--quiet", *gpu])))
            rows.append((f"mergekit-reasoning merge ({device})",
                         measure([*ours, "merge", rv, out("stream"), "--quiet", "--overwrite", *gpu])))
            if device == "cuda":
                rows.append(("mergekit-reasoning merge (--read-to-gpu)",
                             measure([*ours, "merge", rv, out("stream-r2g"), "--quiet", "--overwrite", "--read-to-gpu"])))
            lams = [str(round(-1 + 2 * i / max(args.sweep - 1, 1), 3)) for i in range(args.sweep)]
            sweep_args = [a for lam in lams for a in ("--lambda", lam)]
            rows.append((f"mergekit-reasoning merge, sweep of {args.sweep} λ ({device})",
                         measure([*ours, "merge", rv, out("sweep"), "--quiet", "--overwrite", *gpu, *sweep_args])))

        floor = {d: r["wall"] for name, r in rows if name.startswith("floor") for d in devices if f"({d})" in name}
        stock = {d: r["wall"] for name, r in rows if name.startswith("stock mergekit-yaml task") for d in devices if f"({d})" in name}
        print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
              f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores; "
              f"python {platform.python_version()}")
        print(f"inputs: 3 × {args.shape} stand-ins, {args.layers} layers, bf16, {input_bytes / 1e9:.2f} GB in all\n")
        base = {"floor": imports["torch + safetensors"]["wall"], "other": imports["mergekit's stack"]["wall"]}
        print("| approach | wall s | peak RSS GB | × floor | × stock | wall − imports s | × floor, both less imports |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, r in rows:
            device = "cuda" if "(cuda)" in name or "read-to-gpu" in name else "cpu"
            work = r["wall"] - base["floor" if name.startswith("floor") else "other"]
            floor_work = floor[device] - base["floor"]
            print(f"| {name} | {r['wall']:.1f} | {r['rss_kb'] / 1e6:.2f} | {r['wall'] / floor[device]:.2f} | "
                  f"{r['wall'] / stock[device]:.2f} | {work:.1f} | {work / floor_work:.2f} |")
        for name, r in imports.items():
            print(f"| import {name} only | {r['wall']:.1f} | {r['rss_kb'] / 1e6:.2f} | | | | |")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
