"""Peak memory of a merge as the model grows: does it follow the shard size, not the model size?

Issue 4 asks that peak RSS stay near twice the output shard size whatever the
model size, so that a 7B merge never needs 3 × 15 GB of RAM. This builds bf16
stand-ins with Qwen2.5-7B's real shapes (untied, 152064 vocabulary rows) at
several layer counts and records, for each output shard size, the peak RSS of
the stock `mergekit-yaml` path of the method and of `mergekit-reasoning merge`.
Flat rows across layer counts mean memory is bounded by the shard and the
largest tensor, not by the model.

    python benchmarks/merge_memory.py --layers 2 8 --shard-size 1B 5B
"""

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import merge_speed
from _launch import MERGEKIT_REASONING, MERGEKIT_YAML, command


def peak_memory(command) -> dict:
    """Peak resident memory of one run, split as the kernel counts it.

    RssAnon is memory the process owns; RssFile is pages of the input files it
    has mapped (safetensors reads by mmap), which the kernel can drop and re-read
    under pressure. Sampled every 20 ms from /proc, so a very brief peak can be missed.
    """
    proc = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            break
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in peak:
                peak[key] = max(peak[key], int(value.split()[0]) * 1024)
        time.sleep(0.02)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, command))}\n{err[-2000:]}")
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-7b", choices=["qwen2.5-1.5b", "qwen2.5-7b"])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument(
        "--shard-size",
        nargs="+",
        default=["1B", "5B"],
        help="mergekit --out-shard-size values (bytes; 5B is its default)",
    )
    parser.add_argument(
        "--input-shard-gb",
        type=float,
        default=3.9,
        help="split each stand-in into shards of this size, as Qwen2.5-7B's 4 shards are",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from mergekit_reasoning.testing.standins import write_trio

    work = args.workdir or Path(tempfile.mkdtemp(prefix="merge-memory-"))
    os.environ["MERGEKIT_REASONING_CACHE"] = str(work / "hash-cache")
    stock_yaml, ours = command(MERGEKIT_YAML), command(MERGEKIT_REASONING)
    rows = []
    try:
        for layers in args.layers:
            models = write_trio(
                work / f"models-{layers}",
                shape=args.shape,
                num_layers=layers,
                tokenizer=False,
                max_shard_bytes=int(args.input_shard_gb * 1e9),
            )
            size = sum(f.stat().st_size for f in models["target"].glob("*.safetensors"))
            rv = merge_speed.recipe(models, "reasoning_vector", work / f"rv-{layers}.yml")
            for shard in args.shard_size:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                stock = peak_memory([*stock_yaml, rv, out / "stock", "--quiet", "--out-shard-size", shard])
                mine = peak_memory([*ours, "merge", rv, out / "ours", "--quiet", "--out-shard-size", shard])
                rows.append((layers, size, shard, stock, mine))
            shutil.rmtree(work / f"models-{layers}", ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.node()}, {platform.machine()}, {cores} cores; python {platform.python_version()}")
    print(
        f"inputs: 3 × {args.shape} stand-ins, bf16, in shards of at most {args.input_shard_gb} GB; "
        "output written with each --out-shard-size"
    )
    print("Peak GB: total RSS / anonymous (owned) / file-backed (mapped inputs, reclaimable).\n")
    print("| layers | each model GB | --out-shard-size | stock mergekit-yaml | mergekit-reasoning merge |")
    print("| --- | --- | --- | --- | --- |")
    for layers, size, shard, stock, mine in rows:
        cells = [" / ".join(f"{r[k] / 1e9:.2f}" for k in ("VmRSS", "RssAnon", "RssFile")) for r in (stock, mine)]
        print(f"| {layers} | {size / 1e9:.2f} | {shard} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
