"""Merge speed and memory against the copy floor and stock mergekit, in one interleaved run.

Builds bf16 stand-ins with Qwen2.5-1.5B's real shapes (all 28 layers by default,
3.1 GB each; or 7B's), then runs, each in a fresh process and interleaved round
by round (so a busy moment hurts every approach alike): the copy floor (read
every input tensor, write the target's, no arithmetic; as the issue defined it,
with a variant that really reads every input byte, and one that writes the
target once per sweep λ, the disk's floor for a sweep), a naive safetensors loop
with float32 arithmetic, stock mergekit `task_arithmetic` and this package's
method through `mergekit-yaml`, and `mergekit-reasoning merge` (the streaming
executor) with the fused kernel and with the torch kernel it replaced
(MERGEKIT_REASONING_KERNEL=torch), one λ and a λ sweep, plus one run that pays
numba's compilation (empty NUMBA_CACHE_DIR). Best wall time of `--repeats`
rounds, largest peak RSS, ratios to the copy floor and to stock mergekit, as
markdown. `regenerate` of the same recipe (one recipe, no output yet, input hashes
cached as for `merge`'s later rounds) shows that it takes the same fast path.
`--kernels` adds the in-process comparison of kernel candidates on one
MLP-sized tensor. Outputs are deleted after each run; the inputs at the end.

    python benchmarks/merge_speed.py [--layers 28] [--shape qwen2.5-7b] [--cuda] [--sweep 4] [--kernels]
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _launch import MERGEKIT_REASONING, MERGEKIT_YAML, command

COPY_FLOOR = """
import sys, torch
from safetensors import safe_open
from safetensors.torch import save_file
target, grpo, sft, out, device = sys.argv[1:6]
kept = {}
with safe_open(target + "/model.safetensors", "pt") as t, safe_open(grpo + "/model.safetensors", "pt") as g, \\
        safe_open(sft + "/model.safetensors", "pt") as s:
    for name in t.keys():
        a, _, _ = t.get_tensor(name).to(device), g.get_tensor(name).to(device), s.get_tensor(name).to(device)
        kept[name] = a.cpu()
save_file(kept, out + "/model.safetensors")
"""

# The floor above maps GRPO and SFT but never touches their bytes (safetensors hands out
# views of the mapped file, and nothing reads them): this one reads both files through
# read() into one reused buffer, the cheapest way to really read them, and writes the target.
COPY_FLOOR_READ_ALL = """
import sys, torch
from safetensors import safe_open
from safetensors.torch import save_file
target, grpo, sft, out, device = sys.argv[1:6]
buffer = bytearray(64 << 20)
for model in (grpo, sft):
    with open(model + "/model.safetensors", "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass
kept = {}
with safe_open(target + "/model.safetensors", "pt") as t:
    for name in t.keys():
        kept[name] = t.get_tensor(name).to(device).cpu()
save_file(kept, out + "/model.safetensors")
"""

# The floor of a sweep: the same reads, and the target written once per λ.
COPY_FLOOR_OUTPUTS = COPY_FLOOR.replace(
    'save_file(kept, out + "/model.safetensors")',
    "import os\nfor copy in range(int(sys.argv[6])):\n"
    '    os.makedirs(f"{out}/copy{copy}")\n    save_file(kept, f"{out}/copy{copy}/model.safetensors")',
)

NAIVE = """
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


def measure_once(command, env=None):
    """Wall time and peak RSS of one run in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, command)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, command))}\n{done.stderr}")
    return json.loads(done.stdout)


def recipe(models, method, path):
    from mergekit_reasoning.executor.recipe import Recipe

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
        data = Recipe.for_pair(models["target"], models["grpo"], models["sft"], 1.0).data
    path.write_text(yaml.safe_dump(data))
    return path


KERNEL_SHAPE = (8960, 1536)  # one MLP projection of Qwen2.5-1.5B


def kernel_candidates(repeats: int, sweep: int, compile_: bool) -> None:
    """Each way of doing the arithmetic, in this process, on one tensor in memory.

    Bits are compared with the torch kernel the package shipped before the fused
    pass (MERGEKIT_REASONING_KERNEL=torch); time is the best of `repeats`, interleaved.
    """
    import torch

    from mergekit_reasoning.method import kernel

    gen = torch.Generator().manual_seed(0)
    target = torch.randn(KERNEL_SHAPE, generator=gen).to(torch.bfloat16)
    grpo = (target.float() + torch.randn(KERNEL_SHAPE, generator=gen) * 1e-3).to(torch.bfloat16)
    sft = (target.float() + torch.randn(KERNEL_SHAPE, generator=gen) * 1e-3).to(torch.bfloat16)
    n = target.numel()

    def with_kernel(name):
        def run(lams):
            os.environ["MERGEKIT_REASONING_KERNEL"] = name
            try:
                return kernel.apply_vector_sets(
                    target, [(grpo, sft)], [[lam] for lam in lams], out_dtype=torch.bfloat16
                )
            finally:
                del os.environ["MERGEKIT_REASONING_KERNEL"]

        return run

    block = 1 << 16

    def torch_blocked(lams):
        """In-place torch ops on preallocated float32 blocks that stay in cache."""
        outputs = [torch.empty(KERNEL_SHAPE, dtype=torch.bfloat16) for _ in lams]
        flat_t, flat_g, flat_s = target.view(-1), grpo.view(-1), sft.view(-1)
        delta, total, scaled = torch.empty(block), torch.empty(block), torch.empty(block)
        for start in range(0, n, block):
            m = min(block, n - start)
            d, acc, tmp = delta[:m], total[:m], scaled[:m]
            d.copy_(flat_g[start : start + m]).sub_(flat_s[start : start + m])
            for lam, output in zip(lams, outputs):
                acc.copy_(flat_t[start : start + m])
                if lam == 1:
                    acc.add_(d)
                else:
                    acc.add_(torch.mul(d, torch.tensor(lam, dtype=torch.float32).item(), out=tmp))
                output.view(-1)[start : start + m].copy_(acc)
        return outputs

    candidates = {
        "copy: clone the target once per λ": lambda lams: [target.clone() for _ in lams],
        "torch kernel (before: a pass per step)": with_kernel("torch"),
        "torch, in-place on 256 KB float32 blocks": torch_blocked,
        "numba fused pass (now)": with_kernel("fused"),
    }
    notes = {}
    if compile_:
        if not shutil.which(os.environ.get("CXX", "g++")):
            notes["torch.compile"] = "not run: no C++ compiler"
        else:

            @torch.compile(dynamic=False)
            def step(t, g, s, lam):
                return (t.float() + (g.float() - s.float()) * lam).to(torch.bfloat16)

            def compiled(lams):
                return [step(target, grpo, sft, torch.tensor(lam, dtype=torch.float32).item()) for lam in lams]

            start = time.perf_counter()
            compiled([0.5])
            notes["torch.compile (inductor, C++)"] = f"first call compiles: {time.perf_counter() - start:.1f} s"
            candidates["torch.compile (inductor, C++)"] = compiled
    lams = [round(-1 + 2 * i / max(sweep - 1, 1), 3) for i in range(sweep)]
    reference = with_kernel("torch")([1.0, 0.37])
    same = {}
    for name, run in candidates.items():
        if not name.startswith("copy"):
            got = run([1.0, 0.37])
            same[name] = all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(got, reference))
    best = {name: [float("inf"), float("inf")] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            for slot, values in enumerate(([1.0], lams)):
                start = time.perf_counter()
                run(values)
                best[name][slot] = min(best[name][slot], time.perf_counter() - start)
    copy = best["copy: clone the target once per λ"][0]
    gb = 3 * n * target.element_size() / 1e9
    print(
        f"\nkernel candidates: one {KERNEL_SHAPE[0]}×{KERNEL_SHAPE[1]} bf16 tensor in memory, best of {repeats}, "
        f"{torch.get_num_threads()} torch threads\n"
    )
    print(f"| candidate | one λ ms | sweep of {sweep} λ ms | inputs read GB/s | × copy | bits = torch kernel |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (one, many) in best.items():
        print(
            f"| {name} | {one * 1e3:.0f} | {many * 1e3:.0f} | {gb / one:.1f} | {one / copy:.1f} | "
            f"{'' if name.startswith('copy') else 'yes' if same[name] else 'NO'} |"
        )
    for name, note in notes.items():
        print(f"- {name}: {note}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-1.5b", choices=["qwen2.5-1.5b", "qwen2.5-7b"])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--cuda", action="store_true", help="also time the GPU paths")
    parser.add_argument("--sweep", type=int, default=4, help="λ values in the one-pass sweep")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best wall time is kept")
    parser.add_argument("--kernels", action="store_true", help="also compare kernel candidates in memory")
    parser.add_argument("--torch-compile", action="store_true", help="include torch.compile among the candidates")
    parser.add_argument("--kernels-only", action="store_true", help="only the in-memory kernel comparison")
    parser.add_argument(
        "--only",
        default="",
        help="comma list of name prefixes: run only those approaches (with the copy floors and stock, for the ratios)",
    )
    args = parser.parse_args()

    if args.kernels or args.kernels_only:
        kernel_candidates(max(args.repeats, 3), args.sweep, args.torch_compile)
        if args.kernels_only:
            return

    from mergekit_reasoning.testing.standins import write_trio

    work = args.workdir or Path(tempfile.mkdtemp(prefix="merge-speed-"))
    os.environ["MERGEKIT_REASONING_CACHE"] = str(work / "hash-cache")  # private, starts empty
    stock_yaml, ours = command(MERGEKIT_YAML), command(MERGEKIT_REASONING)
    try:
        models = write_trio(work / "models", shape=args.shape, num_layers=args.layers, tokenizer=False)
        input_bytes = sum(f.stat().st_size for m in models.values() for f in m.glob("*.safetensors"))
        ta, rv = recipe(models, "task_arithmetic", work / "ta.yml"), recipe(models, "reasoning_vector", work / "rv.yml")
        recipes = work / "recipes"  # `regenerate` reads a folder of recipes
        recipes.mkdir(exist_ok=True)
        shutil.copy(rv, recipes / "rv.yml")
        out = work / "out"
        inputs = [models["target"], models["grpo"], models["sft"], out]
        torch_kernel = {"MERGEKIT_REASONING_KERNEL": "torch"}
        lams = [str(round(-1 + 2 * i / max(args.sweep - 1, 1), 3)) for i in range(args.sweep)]
        sweep_args = [a for lam in lams for a in ("--lambda", lam)]
        sweep = f"sweep of {args.sweep} λ"

        approaches = [  # (name, command, extra environment)
            ("import torch + safetensors only", [sys.executable, "-c", "import torch, safetensors.torch"], None),
            (
                "import mergekit's stack only",
                [sys.executable, "-c", "import mergekit.merge, mergekit.plan, mergekit.card"],
                None,
            ),
        ]
        for device in ["cpu"] + (["cuda"] if args.cuda else []):
            gpu = ["--cuda"] if device == "cuda" else []
            approaches += [
                (
                    f"copy floor: read all inputs, write the target ({device})",
                    [sys.executable, "-c", COPY_FLOOR, *inputs, device],
                    None,
                ),
                (
                    f"copy floor, every input byte read ({device})",
                    [sys.executable, "-c", COPY_FLOOR_READ_ALL, *inputs, device],
                    None,
                ),
                (
                    f"copy floor, the target written {args.sweep} times ({device})",
                    [sys.executable, "-c", COPY_FLOOR_OUTPUTS, *inputs, device, str(args.sweep)],
                    None,
                ),
                (f"naive safetensors loop, float32 ({device})", [sys.executable, "-c", NAIVE, *inputs, device], None),
                (f"stock mergekit-yaml task_arithmetic ({device})", [*stock_yaml, ta, out, "--quiet", *gpu], None),
                (f"stock mergekit-yaml reasoning_vector ({device})", [*stock_yaml, rv, out, "--quiet", *gpu], None),
                (
                    f"mergekit-reasoning merge ({device})",
                    [*ours, "merge", rv, out, "--quiet", "--overwrite", *gpu],
                    None,
                ),
                (
                    f"mergekit-reasoning merge, {sweep} ({device})",
                    [*ours, "merge", rv, out, "--quiet", "--overwrite", *gpu, *sweep_args],
                    None,
                ),
                (
                    f"mergekit-reasoning regenerate, the same recipe ({device})",
                    [*ours, "regenerate", recipes, "--out", out, *gpu],
                    None,
                ),
            ]
            if device == "cpu":
                approaches += [
                    (
                        "stock mergekit-yaml reasoning_vector, torch kernel (before)",
                        [*stock_yaml, rv, out, "--quiet"],
                        torch_kernel,
                    ),
                    (
                        "mergekit-reasoning merge, torch kernel (before)",
                        [*ours, "merge", rv, out, "--quiet", "--overwrite"],
                        torch_kernel,
                    ),
                    (
                        f"mergekit-reasoning merge, {sweep}, torch kernel (before)",
                        [*ours, "merge", rv, out, "--quiet", "--overwrite", *sweep_args],
                        torch_kernel,
                    ),
                    (
                        "mergekit-reasoning merge, numba compiling (empty cache)",
                        [*ours, "merge", rv, out, "--quiet", "--overwrite"],
                        {"NUMBA_CACHE_DIR": "fresh"},
                    ),
                ]
            else:
                approaches.append(
                    (
                        "mergekit-reasoning merge (--read-to-gpu)",
                        [*ours, "merge", rv, out, "--quiet", "--overwrite", "--read-to-gpu"],
                        None,
                    )
                )

        if args.only:
            keep = (
                "copy floor",
                "stock mergekit-yaml task_arithmetic",
                "mergekit-reasoning merge (",
                *args.only.split(","),
            )
            approaches = [a for a in approaches if a[0].startswith(keep) or any(k in a[0] for k in keep)]
        runs = {name: [] for name, _, _ in approaches}
        for _round in range(args.repeats):  # interleaved: every approach once per round
            for name, argv, env in approaches:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                if env and env.get("NUMBA_CACHE_DIR") == "fresh":
                    env = {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="numba-cold-", dir=work)}
                runs[name].append(measure_once(argv, env))
                shutil.rmtree(out, ignore_errors=True)
        best = {
            name: {"wall": min(r["wall"] for r in rs), "rss_kb": max(r["rss_kb"] for r in rs)}
            for name, rs in runs.items()
        }

        def find(prefix, device="cpu"):
            return next(best[name]["wall"] for name in best if name.startswith(prefix) and f"({device})" in name)

        print(
            f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
            f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores; "
            f"python {platform.python_version()}; load average before the run: {os.getloadavg()[0]:.1f}"
        )
        print(
            f"inputs: 3 × {args.shape} stand-ins, {args.layers} layers, bf16, {input_bytes / 1e9:.2f} GB in all; "
            f"best of {args.repeats} interleaved rounds\n"
        )
        print("| approach | wall s | peak RSS GB | × copy floor | × stock task_arithmetic |")
        print("| --- | --- | --- | --- | --- |")
        for name, r in best.items():
            device = "cuda" if "(cuda)" in name or "read-to-gpu" in name else "cpu"
            floor, stock = find("copy floor", device), find("stock mergekit-yaml task_arithmetic", device)
            ratios = "| |" if name.startswith("import") else f"| {r['wall'] / floor:.2f} | {r['wall'] / stock:.2f} |"
            print(f"| {name} | {r['wall']:.1f} | {r['rss_kb'] / 1e6:.2f} {ratios}")

        def found(prefix, device="cpu"):
            return next((best[n]["wall"] for n in best if n.startswith(prefix) and f"({device})" in n), None)

        one, many = found("mergekit-reasoning merge ("), found(f"mergekit-reasoning merge, {sweep} (")
        floor_one, floor_many = (
            found("copy floor: read all"),
            found(f"copy floor, the target written {args.sweep} times"),
        )
        print(
            f"\nmergekit-reasoning merge: {one / floor_one:.2f} × the copy floor, "
            f"{one / found('copy floor, every input byte read'):.2f} × the floor that reads every input byte, "
            f"{one / found('stock mergekit-yaml task_arithmetic'):.2f} × stock task_arithmetic"
        )
        if found("mergekit-reasoning regenerate"):
            print(
                f"regenerate of the same recipe: {found('mergekit-reasoning regenerate') / one:.2f} × merge "
                "(both through the executor's one entry point)"
            )
        before = f"mergekit-reasoning merge, {sweep}, torch kernel (before)"
        if many and before in best:
            before_one = best["mergekit-reasoning merge, torch kernel (before)"]["wall"]
            before_many = best[before]["wall"]
            extra = max(args.sweep - 1, 1)
            print(
                f"each extra λ of the sweep: {(many - one) / extra / one:.2f} × one merge "
                f"(torch kernel before: {(before_many - before_one) / extra / before_one:.2f} ×); "
                f"each extra copy of the copy floor: {(floor_many - floor_one) / extra / floor_one:.2f} × the floor, "
                f"{(floor_many - floor_one) / extra:.1f} s"
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
