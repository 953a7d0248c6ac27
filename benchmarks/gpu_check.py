"""The CUDA checks, as one script for a machine with a GPU.

Builds three bf16 stand-ins with Qwen2.5-1.5B's shapes, merges the add recipe
on the CPU and on the GPU through every path (stock `mergekit-yaml` with and
without `--cuda`/`--read-to-gpu`, `mergekit-reasoning merge` likewise, and a
regenerated merge), and requires every GPU output to be bitwise identical to
the CPU output. The CPU reference is the fused kernel (numba) where numba is
installed; the CPU merge with the torch kernel (MERGEKIT_REASONING_KERNEL=torch)
is checked against it too, so both CPU kernels and the GPU agree. Prints a
markdown table of wall times and the verdict; exits 1 if any output differs.

    python benchmarks/gpu_check.py --layers 28
    (on the GPU machine, after benchmarks/device_setup.sh here:
     PYTHONPATH=/tmp/site MKR_SITES=/tmp/site python3 benchmarks/gpu_check.py --layers 28)
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _launch import MERGEKIT_REASONING, MERGEKIT_YAML, command


def shard_hashes(folder: Path) -> dict:
    from mergekit_reasoning.core.hashing import hash_files

    return hash_files(folder, [p.name for p in folder.glob("*.safetensors")], cached=False)


def timed(command, env=None) -> float:
    start = time.perf_counter()
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, command))}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cpu-only", action="store_true", help="dry run of the script itself, without CUDA runs")
    args = parser.parse_args()

    import torch

    from mergekit_reasoning.core.shipped import recipes_dir
    from mergekit_reasoning.method.kernel import fused_module
    from mergekit_reasoning.testing.standins import retarget, write_trio

    if not torch.cuda.is_available() and not args.cpu_only:
        raise SystemExit("no CUDA device visible")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ["MERGEKIT_REASONING_CACHE"] = str(work / "hash-cache")
    try:
        models = write_trio(work / "models", shape="qwen2.5-1.5b", num_layers=args.layers)
        data = yaml.safe_load((recipes_dir() / "qwen1.5b_add.yml").read_text())
        recipe = work / "recipes" / "qwen1.5b_add.yml"
        recipe.parent.mkdir(parents=True)
        recipe.write_text(
            yaml.safe_dump(retarget(data, str(models["target"]), {r: str(models[r]) for r in ("grpo", "sft")}))
        )

        stock, ours = command(MERGEKIT_YAML), command(MERGEKIT_REASONING)
        torch_kernel = {"MERGEKIT_REASONING_KERNEL": "torch"}
        runs = {  # name: (command, output folder[, environment])
            "mergekit-yaml (cpu)": (stock + [recipe, work / "o1", "--quiet"], work / "o1"),
            "mergekit-reasoning merge (cpu, torch kernel)": (
                ours + ["merge", recipe, work / "o8", "--quiet"],
                work / "o8",
                torch_kernel,
            ),
            "mergekit-yaml --cuda": (stock + [recipe, work / "o2", "--quiet", "--cuda"], work / "o2"),
            "mergekit-yaml --cuda --read-to-gpu": (
                stock + [recipe, work / "o3", "--quiet", "--cuda", "--read-to-gpu"],
                work / "o3",
            ),
            "mergekit-reasoning merge (cpu)": (ours + ["merge", recipe, work / "o4", "--quiet"], work / "o4"),
            "mergekit-reasoning merge --cuda": (
                ours + ["merge", recipe, work / "o5", "--quiet", "--cuda"],
                work / "o5",
            ),
            "mergekit-reasoning merge --read-to-gpu": (
                ours + ["merge", recipe, work / "o6", "--quiet", "--read-to-gpu"],
                work / "o6",
            ),
            "mergekit-reasoning regenerate --cuda": (
                ours + ["regenerate", recipe.parent, "--out", work / "o7", "--cuda"],
                work / "o7" / recipe.stem,
            ),
        }
        if args.cpu_only:
            runs = {name: run for name, run in runs.items() if "cuda" not in name and "gpu" not in name}
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only"
        cpu_kernel = "fused (numba)" if fused_module() else "torch (numba is not installed)"
        print(f"device: {device}; torch {torch.__version__}; {args.layers} layers; CPU kernel: {cpu_kernel}\n")
        print("| run | wall s | shards equal to CPU stock |")
        print("| --- | --- | --- |")
        reference, all_equal = None, True
        for name, (argv, out, *env) in runs.items():
            wall = timed(argv, *env)
            hashes = shard_hashes(out)
            reference = reference or hashes
            equal = hashes == reference
            all_equal &= equal
            print(f"| {name} | {wall:.1f} | {'yes' if equal else 'NO'} |")
        print(
            f"\nverdict: {'every output is bitwise identical to the stock CPU merge' if all_equal else 'OUTPUTS DIFFER'}"
        )
        sys.exit(0 if all_equal else 1)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
