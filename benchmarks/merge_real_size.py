"""A user's first 7B merge: full-size sharded stand-ins, cold page cache, empty hash cache.

Writes three bf16 stand-ins with Qwen2.5-7B's real shapes and layout (28 layers,
152064 vocabulary rows, untied head, four input shards: 3 × 15.2 GB, more than a
24 GB machine's memory), then runs, each in a fresh process after dropping the
page cache (as root; otherwise it says the cache was warm): the I/O floor (read
every input byte once, write the target's tensors as one output), stock
`mergekit-yaml` (task_arithmetic, the same arithmetic), and `mergekit-reasoning
merge` with an empty hash cache, then once more with the hashes that run cached. For each: wall time, peak RSS, bytes read from
disk (the process tree's /proc io read_bytes), and the least memory available
during the run (MemAvailable, sampled). It needs about 62 GB of free disk and
says so, in one line, where there is less.

    python benchmarks/merge_real_size.py [--workdir DIR] [--keep]
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from _launch import MERGEKIT_REASONING, MERGEKIT_YAML, command
from merge_speed import recipe

NEEDED = 62e9
SHARD = 5_000_000_000  # the hub's 7B checkpoints: four shards of about 5 GB

IO_FLOOR = """
import json, os, sys
from safetensors import safe_open
from safetensors.torch import save_file
target, grpo, sft, out = sys.argv[1:5]
buffer = bytearray(64 << 20)
for model in (grpo, sft):  # every byte of both donors, once
    for name in sorted(os.listdir(model)):
        if name.endswith(".safetensors"):
            with open(os.path.join(model, name), "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
index = json.load(open(os.path.join(target, "model.safetensors.index.json")))["weight_map"]
for shard in sorted(set(index.values())):  # the target's bytes, written as the output
    with safe_open(os.path.join(target, shard), "pt") as handle:
        save_file({k: handle.get_tensor(k) for k in handle.keys()}, os.path.join(out, shard))
"""

MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
_, err = child.communicate()
wall = time.perf_counter() - start
if child.returncode:
    sys.exit(err[-3000:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "rss_kb": usage.ru_maxrss, "read_blocks": usage.ru_inblock}))
"""


def available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def measure(argv, env=None):
    low = [available()]
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            low[0] = min(low[0], available())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = subprocess.run(
            [sys.executable, "-c", MEASURE, *map(str, argv)],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
        )
    finally:
        done.set()
        sampler.join()
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, argv))}\n{result.stderr}")
    return {**json.loads(result.stdout), "min_available": low[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the stand-ins for another run")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="merge-real-size-", dir=os.environ.get("TMPDIR", "/tmp")))
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    models_dir = work / "models"
    if free < NEEDED and not models_dir.exists():
        print(
            f"skipped: the 7B benchmark needs about {NEEDED / 1e9:.0f} GB of free disk, {work} has {free / 1e9:.0f} GB"
        )
        return
    from mergekit_reasoning.testing.standins import write_trio

    try:
        if not (models_dir / "sft" / "config.json").exists():
            write_trio(models_dir, shape="qwen2.5-7b", num_layers=28, tokenizer=False, max_shard_bytes=SHARD)
        models = {role: models_dir / role for role in ("target", "grpo", "sft")}
        input_bytes = sum(f.stat().st_size for m in models.values() for f in m.glob("*.safetensors"))
        rv = recipe(models, "reasoning_vector", work / "rv.yml")
        ta = recipe(models, "task_arithmetic", work / "ta.yml")
        out = work / "out"
        approaches = [
            (
                "I/O floor: read every input byte once, write the target",
                [sys.executable, "-c", IO_FLOOR, models["target"], models["grpo"], models["sft"], out],
                None,
            ),
            ("stock mergekit-yaml task_arithmetic", [*command(MERGEKIT_YAML), ta, out, "--quiet"], None),
            (
                "mergekit-reasoning merge, first time (empty hash cache)",
                [*command(MERGEKIT_REASONING), "merge", rv, out, "--quiet", "--overwrite"],
                "fresh",
            ),
            (
                "the same merge again (input hashes cached)",
                [*command(MERGEKIT_REASONING), "merge", rv, out, "--quiet", "--overwrite"],
                "again",
            ),
        ]
        rows, cold, env = {}, True, None
        for name, argv, cache in approaches:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            if cache == "fresh":  # the next run, "again", keeps it
                env = {"MERGEKIT_REASONING_CACHE": tempfile.mkdtemp(prefix="hash-cache-", dir=work)}
            elif cache is None:
                env = None
            cold = drop_caches() and cold
            rows[name] = measure(argv, env)
            shutil.rmtree(out, ignore_errors=True)
        floor = rows[approaches[0][0]]["wall"]
        stock = rows[approaches[1][0]]["wall"]
        print(
            f"machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
            f"python {platform.python_version()}; load average before: {os.getloadavg()[0]:.1f}; "
            f"page cache {'dropped before each run' if cold else 'NOT dropped (not root): warm runs'}"
        )
        print(f"inputs: 3 × Qwen2.5-7B-shaped stand-ins, 28 layers, 4 shards each, bf16, {input_bytes / 1e9:.1f} GB\n")
        print("| approach | wall s | × I/O floor | × stock | read from disk GB | peak RSS GB | least available GB |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, row in rows.items():
            print(
                f"| {name} | {row['wall']:.1f} | {row['wall'] / floor:.2f} | {row['wall'] / stock:.2f} | "
                f"{row['read_blocks'] * 512 / 1e9:.1f} | {row['rss_kb'] / 1e6:.1f} | {row['min_available'] / 1e9:.1f} |"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
