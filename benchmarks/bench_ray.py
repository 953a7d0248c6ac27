"""Ray's cost per unit: the same small λ sweep scored locally and on a Ray cluster, in one run.

Locally, `run_sweep` merges every λ in one pass and scores them one after the other, each in
a child process. With `--ray`, each λ is a Ray task that merges it on its node and scores it
there, as many at once as the cluster holds. On a CPU machine the cluster is two nodes of one
CPU each on this machine (ray.cluster_utils.Cluster), as in the tests; with `--gpu`, one
local Ray node with every GPU, one unit per GPU (hf engine on cuda).

Per unit, from the times the task records on its node and the driver's submit and receive
times (one machine, one clock): the start (submitted → started: scheduling and a worker
process's start; a unit queued behind another on its node counts from that one's end), the
return (finished → received: the result moved back and saved), against its time on the
node (merge + scoring). Both runs score the same units with the same scores.

    python benchmarks/bench_ray.py [--lambdas 0.25,0.5,0.75,1] [--limit 8] [--gpu]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DATA = [REPO.parent / "shared" / "data", REPO / "tests" / "bench" / "fixtures" / "data"]


class Timings(logging.Handler):
    """Collects the per-unit timings cluster.py logs."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.units = []

    def emit(self, record):
        if hasattr(record, "unit_timing"):
            self.units.append(record.unit_timing)


def _start_cluster(gpu: bool):
    import ray

    if gpu:
        ray.init(include_dashboard=False, log_to_driver=False)
        return None
    from ray.cluster_utils import Cluster

    node = dict(num_cpus=1, object_store_memory=80 << 20, include_dashboard=False)
    made = Cluster(initialize_head=True, head_node_args=node)
    made.add_node(**node)
    ray.init(address=made.address, include_dashboard=False, log_to_driver=False)
    return made


def _overheads(units):
    """(start, return) seconds per unit; a unit's start counts from the later of its submission and
    the end of the unit before it on the same node (Ray started it as soon as the node was free)."""
    rows, free_at = [], {}
    for u in sorted(units, key=lambda u: u["started"]):
        ready = max(u["submitted"], free_at.get(u["node"], 0.0))
        rows.append((u["started"] - ready, u["received"] - u["finished"], u["finished"] - u["started"], u["merge_s"]))
        free_at[u["node"]] = u["received"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lambdas", default="0.25,0.5,0.75,1")
    parser.add_argument("--limit", type=int, default=8, help="SciQ items per unit")
    parser.add_argument("--gpu", action="store_true", help="one local Ray node with every GPU, one unit per GPU")
    args = parser.parse_args()
    lams = [float(x) for x in args.lambdas.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(work)  # Ray's sockets need a short path
    for variable, folder in (("HF_HOME", "hf"), ("MERGEKIT_REASONING_CACHE", "mkr"), ("XDG_CACHE_HOME", "xdg")):
        os.environ.setdefault(variable, str(work / folder))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from mergekit_reasoning.bench import run_sweep
    from mergekit_reasoning.testing.standins import write_trio

    data = next(str(d.resolve()) for d in DATA if (d / "sciq").is_dir())
    trio = write_trio(work / "models")
    pair = (str(trio["target"]), str(trio["sft"]), str(trio["grpo"]))
    options = dict(data_dir=data, limit=args.limit, batch_size=4, progress=False, plots=False, log_samples=True)
    if args.gpu:
        options["device"] = "cuda"
    try:
        run_sweep(*pair, [lams[0]], "sciq", work / "warm-up", **{**options, "limit": 1})  # caches warm for both

        t0 = time.perf_counter()
        local = run_sweep(*pair, lams, "sciq", work / "local", **options)
        local_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        made = _start_cluster(args.gpu)
        import ray

        start_s = time.perf_counter() - t0
        timings = Timings()
        logging.getLogger("mergekit_reasoning.bench.cluster").addHandler(timings)
        logging.getLogger("mergekit_reasoning.bench.cluster").setLevel(logging.DEBUG)
        t0 = time.perf_counter()
        on_ray = run_sweep(*pair, lams, "sciq", work / "ray", ray="auto", **options)
        ray_s = time.perf_counter() - t0
        nodes = sorted({u["node"] for u in timings.units})
        slots = ray.cluster_resources().get("GPU" if args.gpu else "CPU", 0)
        ray.shutdown()
        if made is not None:
            made.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    same = on_ray["items"] == local["items"] and on_ray["scores"] == local["scores"]
    rows = _overheads(timings.units)
    start = [r[0] for r in rows]
    back = [r[1] for r in rows]
    there = [r[2] for r in rows]
    merge = [r[3] for r in rows]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, ray {ray.__version__}"
    )
    print(f"sweep: {len(lams)} λ of the tiny stand-ins, SciQ, {args.limit} items each, hf engine")
    print(f"cluster: {len(nodes)} nodes used, {slots:g} unit slots; started in {start_s:.1f} s (not counted below)")
    print(f"same per-item outputs and scores as locally: {same}")
    print(f"wall: local {local_s:.1f} s, on Ray {ray_s:.1f} s, ratio Ray/local {ray_s / local_s:.2f}")
    print(
        f"per unit on its node: {statistics.mean(there):.1f} s (of which merging {statistics.mean(merge):.1f} s); "
        f"Ray's start {statistics.mean(start):.2f} s (max {max(start):.2f}), "
        f"result back {statistics.mean(back) * 1000:.0f} ms (max {max(back) * 1000:.0f}); "
        f"overhead / unit time {(statistics.mean(start) + statistics.mean(back)) / statistics.mean(there):.1%}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
