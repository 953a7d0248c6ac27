"""Score a run's units as Ray tasks on a cluster (`--ray [ADDRESS]`): the only module that imports ray.

A unit of work is one scoring child's job (one model; or one λ, trial or ±v, merged
first on the node that scores it). Each becomes a Ray task asking for the resources the
engine needs, so Ray places it on a node that has them and runs as many at once as the
cluster holds. The task still scores in a child process of its own (GPU memory comes
back only at process exit) into a node-local cache, and returns the finished cache
entries, the log and its node; the driver saves them into its own cache, so reports and
resume are those of a local run. Ray is imported inside the functions: without `--ray`
it is never imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from mergekit_reasoning.bench.children import (
    build_job,
    describe_exit,
    file_stem,
    job_label,
    named,
    run_child,
    score_in_children,
)
from mergekit_reasoning.bench.identity import is_local, model_identity
from mergekit_reasoning.bench.results import load_unit, save_unit
from mergekit_reasoning.core.errors import BenchError
from mergekit_reasoning.core.staging import alive

log = logging.getLogger(__name__)

LOCAL = "local"  # `--ray` without an address: start a cluster on this machine
MAX_RETRIES = 2  # tries after the first, for a unit whose worker died (killed, out of memory, node lost)
POLL_SECONDS = 1.0
UNIT_PREFIX = "mergekit-reasoning-unit-"  # a unit's node-local folder: UNIT_PREFIX<Ray worker's pid>-<random>


@dataclass(frozen=True)
class NodeMerge:
    """A model merged on the node that scores it: the recipe's text, the λ it overrides
    (None: the recipe's own) and the folder name it gets there."""

    recipe_text: str
    lam: Optional[float]
    name: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.recipe_text, self.lam]).encode()).hexdigest()

    def __str__(self) -> str:
        return f"{self.name} (merged on its node)"

    def local_inputs(self) -> List[str]:
        from mergekit_reasoning.executor.readahead import recipe_model_dirs
        from mergekit_reasoning.executor.recipe import Recipe

        return [ref for ref in recipe_model_dirs(Recipe.from_text(self.recipe_text)) if is_local(ref)]


def identity_of(ref, cache_dir: Path) -> dict:
    """A model's identity; a node merge's is its content hash as recorded when it was first merged,
    the same a local merge of that recipe and λ gets, or a pending one no unit is cached under."""
    if not isinstance(ref, NodeMerge):
        return model_identity(str(ref))
    memo = _memo_path(cache_dir, ref)
    if memo.is_file():
        return json.loads(memo.read_text())
    return {"source": "merged on node", "sha256": f"pending:{ref.digest}"}


def _memo_path(cache_dir: Path, merge: NodeMerge) -> Path:
    return Path(cache_dir) / "merges" / f"{merge.digest}.json"


def score_units(
    models,
    todo,
    key_of,
    out: Path,
    settings: dict,
    engine: dict,
    progress: bool,
    *,
    together: bool = False,
    ray: Optional[str] = None,
    on_identity: Optional[Callable[[str, dict], None]] = None,
    keep_merges: bool = False,
) -> None:
    """Score the missing units: in local child processes, or with `ray` (an address, `auto`, or
    `local`) as Ray tasks. `on_identity(label, identity)` learns a node merge's identity before its
    units are keyed and saved."""
    if ray is None:
        return score_in_children(models, todo, key_of, out, settings, engine, progress, together=together)
    return _score_on_cluster(ray, models, todo, key_of, out, settings, engine, progress, on_identity, keep_merges)


# -- the driver ------------------------------------------------------------------------------------


def connect(address: str) -> None:
    """Join the cluster at `address` (`auto`: the one `ray start` made), or start one here (`local`);
    a connection the process already has is kept (tests, notebooks, a second call)."""
    import ray

    if ray.is_initialized():
        return
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        ray.init(**options) if address == LOCAL else ray.init(address=address, **options)
    except ConnectionError as exc:
        raise BenchError(f"cannot join the Ray cluster at {address}: {exc}") from None


def task_resources(engine: dict, cluster: dict) -> dict:
    """What one unit asks Ray for: vLLM's tensor × data parallel GPUs, one GPU for hf, on a cluster
    that has GPUs and unless told to score on the CPU; else one CPU."""
    options = engine.get("options") or {}
    if cluster.get("GPU", 0) > 0 and not str(engine.get("device") or "").startswith("cpu"):
        if engine["engine"] == "vllm":
            return {"num_gpus": (options.get("tensor_parallel_size") or 1) * (options.get("data_parallel_size") or 1)}
        return {"num_gpus": 1}
    return {"num_cpus": 1}


def _score_on_cluster(address, models, todo, key_of, out, settings, engine, progress, on_identity, keep_merges):
    import ray

    connect(address)
    refs = {label: _absolute(ref) for label, ref in models.items()}
    resources = task_resources(engine, ray.cluster_resources())
    check_nodes(_needed_folders(refs, todo, settings), resources)
    logs_dir, cache_dir = Path(out) / "logs", Path(out) / "cache"
    logs_dir.mkdir(parents=True, exist_ok=True)
    task = ray.remote(score_unit_here).options(
        max_retries=MAX_RETRIES, retry_exceptions=[UnitDied], name="mergekit-reasoning unit", **resources
    )
    starts = _start_register()
    pending = {}
    for label in todo:
        units = [unit for per in todo[label].values() for unit in per]
        slots = {unit: f"u{i}" for i, unit in enumerate(units)}
        job = build_job([label], refs, todo, lambda *unit, slots=slots: slots[unit], Path("."), settings, engine)
        merge = refs[label] if isinstance(refs[label], NodeMerge) else None
        ref = task.remote(job, merge, keep_merges, starts, label)
        pending[ref] = (label, {slot: unit for unit, slot in slots.items()}, time.time())
    failures, finished, total = [], 0, len(pending)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                label, slots, submitted = pending.pop(ref)
                log_path = logs_dir / f"{file_stem(job_label([label]))}.log"
                failure, line = _collect(
                    ref, label, slots, submitted, log_path, models, key_of, cache_dir, on_identity, starts
                )
                finished += 1
                _say(f"[{finished}/{total}] {line}", progress)
                if failure:
                    failures.append(failure)
    except KeyboardInterrupt:
        for ref in pending:  # force: the worker process dies, and its scoring child with it
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.kill(starts)  # a connection kept for a next run (a notebook) keeps no register of this one
    if failures:
        raise BenchError("; ".join(failures) + " - finished scores are kept; rerun to resume")


def _collect(ref, label, slots, submitted, log_path, models, key_of, cache_dir, on_identity, starts):
    """Save one finished task's units into the driver's cache and its log into out/logs;
    (failure line or None, progress line)."""
    import ray
    from ray.exceptions import RayError

    who = named([label], models)
    try:
        result = ray.get(ref)
    except RayError as exc:
        died = getattr(exc, "cause", None)  # a UnitDied comes back inside a RayTaskError
        if isinstance(died, UnitDied):
            log_path.write_text(f"[ray] {label}: last try on node {died.node}: {died.reason}\n{died.log}")
            line = f"{who} on node {died.node}: {died.reason} after {MAX_RETRIES + 1} tries [log: {log_path}]"
        else:  # the worker or its node was lost each time: its own log went with it; keep what Ray said
            nodes = _tries_of(starts, label)
            where = f"last on node {nodes[-1]}" if nodes else "before it started on any node"
            tries = "".join(f"[ray] try {i} started on node {node}\n" for i, node in enumerate(nodes, 1))
            log_path.write_text(f"[ray] {label}: Ray lost its worker each time\n{tries}{exc}\n")
            first = (str(exc).strip().splitlines() or [""])[0]
            line = (
                f"{who}: Ray lost its worker {MAX_RETRIES + 1} times, {where}: "
                f"{type(exc).__name__}: {first} [log: {log_path}]"
            )
        return line, line
    received = time.time()
    node = result["node"]
    log_path.write_text(f"[ray] {label} ran on node {node}\n{result['log']}")
    if result["identity"] is not None:
        memo = _memo_path(cache_dir, models[label])
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps(result["identity"]))
        if on_identity is not None:
            on_identity(label, result["identity"])
    for slot, entry in result["units"].items():
        save_unit(cache_dir, key_of(*slots[slot]), entry)
    on_node = result["finished"] - result["started"]
    overhead = (received - submitted) - on_node  # scheduling, a worker's start, arguments and results moved
    timing = {"label": label, "node": node, "submitted": submitted, "received": received, "merge_s": result["merge_s"]}
    timing.update({k: result[k] for k in ("started", "finished")})
    log.debug("unit timing", extra={"unit_timing": timing})
    kept = f", merge kept at {result['kept']}" if result.get("kept") else ""
    saved = sum(load_unit(cache_dir, key_of(*unit)) is not None for unit in slots.values())
    line = f"{label} on node {node}: {saved}/{len(slots)} units, {on_node:.1f} s there, {overhead:.1f} s in Ray{kept}"
    if result["error"] is not None or result["code"] != 0:
        reason = result["error"] or describe_exit(result["code"])
        return f"{who} on node {node}: {reason} [log: {log_path}]", line
    if saved < len(slots):
        return f"{who} on node {node}: finished without saving all its scores [log: {log_path}]", line
    return None, line


class StartRegister:
    """The node each try of a unit started on, kept by an actor on the driver's node: a worker that
    Ray lost (killed, out of memory, its node gone) cannot say where it ran."""

    def __init__(self):
        self.nodes = {}

    def started(self, label: str, node: str) -> None:
        self.nodes.setdefault(label, []).append(node)

    def of(self, label: str) -> List[str]:
        return self.nodes.get(label, [])


def _start_register():
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(StartRegister).options(num_cpus=0, scheduling_strategy=here).remote()


def _tries_of(starts, label: str) -> List[str]:
    import ray
    from ray.exceptions import RayError

    try:
        return ray.get(starts.of.remote(label), timeout=30)
    except RayError:  # the register is lost too: the line says less, the run goes on
        return []


def _say(line: str, progress: bool) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)
    else:
        log.info(line)


def _absolute(ref):
    """A local folder as the absolute path every node must see it at; hub ids and node merges as given."""
    if isinstance(ref, NodeMerge) or not is_local(str(ref)):
        return ref
    return os.path.abspath(os.path.expanduser(str(ref)))


def _needed_folders(refs, todo, settings) -> List[str]:
    """Every local folder a worker reads: the models it scores, the inputs of what it merges, the data."""
    folders = []
    for label in todo:
        ref = refs[label]
        folders += ref.local_inputs() if isinstance(ref, NodeMerge) else [ref] if is_local(str(ref)) else []
    if settings.get("data_dir"):
        folders.append(settings["data_dir"])
    return [os.path.abspath(os.path.expanduser(f)) for f in dict.fromkeys(folders)]


def check_nodes(folders: List[str], resources: dict) -> None:
    """Before any scoring: every node that can run a unit reads every local folder, or one line names
    the node and the folder (hub ids are not checked: each node resolves them in its own hub cache)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not folders:
        return
    need = "GPU" if resources.get("num_gpus") else "CPU"
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(need, 0) > 0]
    probe = ray.remote(unreadable_here)
    checks = [
        (probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)), n)
        for n in nodes
    ]
    checks = [(task.remote(folders), node) for task, node in checks]
    for ref, node in checks:
        missing = ray.get(ref)
        if missing:
            path, reason = missing[0]
            raise BenchError(
                f"node {_node_name(node)} cannot read {path} ({reason}): local folders must be on storage "
                "every node shares, at the same path"
            )


def _node_name(node: dict) -> str:
    address = node.get("NodeManagerAddress") or "?"
    return f"{address} ({node['NodeID'][:8]})"


# -- on the node -----------------------------------------------------------------------------------


class UnitDied(Exception):
    """The scoring child (or its merge) was killed: Ray retries the unit, up to MAX_RETRIES times."""

    def __init__(self, reason: str, node: str, log: str):
        super().__init__(reason, node, log)
        self.reason, self.node, self.log = reason, node, log

    def __str__(self) -> str:
        return f"{self.reason} on node {self.node}"


def unreadable_here(folders: List[str]) -> List[tuple]:
    """(folder, why) for each folder this node cannot list and read."""
    missing = []
    for folder in folders:
        if not os.path.isdir(folder):
            missing.append((folder, "no such folder" if not os.path.exists(folder) else "not a folder"))
        elif not os.access(folder, os.R_OK | os.X_OK):
            missing.append((folder, "not readable"))
    return missing


def _this_node() -> str:
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return f"{ray.util.get_node_ip_address()} ({node_id[:8]}, {socket.gethostname()})"


def _dies_with_parent():
    """A preexec_fn that makes the scoring child get SIGKILL when the Ray worker that started it dies
    (Linux's PR_SET_PDEATHSIG); resolved here, in the parent, so that after fork only the call runs."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: a cancelled task still stops its child (run_child)
        return None
    return lambda: prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG


def score_unit_here(job: dict, merge: Optional[NodeMerge], keep_merges: bool, starts=None, label: str = "") -> dict:
    """The Ray task: merge (where asked) into this node's local disk, score in a child process into a
    node-local cache, and return the units, the log and where it ran; the merge is removed unless kept.
    `starts` (a StartRegister) learns where each try began."""
    import ray

    started = time.time()
    node = _this_node()
    if starts is not None:
        ray.get(starts.started.remote(label, node))
    _remove_leftovers()
    work = Path(tempfile.mkdtemp(prefix=f"{UNIT_PREFIX}{os.getpid()}-"))
    job_path, log_path, folder = work / "job.json", work / "worker.log", work / "merges" / (merge.name if merge else "")
    try:
        identity, error, merge_s = None, None, 0.0
        if merge is not None:
            error = _merge_here(merge, folder, log_path)
            merge_s = time.time() - started
            if error is None:
                identity = {**model_identity(str(folder)), "source": "merged on node", "lambda": merge.lam}
                identity.pop("path")  # removed with the merge; the content hash is what keys its units
                job = {**job, "ref": str(folder)}
        code = 1
        if error is None:
            job_path.write_text(json.dumps({**job, "cache_dir": str(work / "cache")}))
            code = run_child(job_path, log_path, lambda: None, preexec_fn=_dies_with_parent())
            if code < 0:
                raise UnitDied(describe_exit(code), node, _read(log_path))
            error_path = job_path.with_suffix(".error")
            error = error_path.read_text().strip() if error_path.is_file() else None
        units = {p.stem: json.loads(p.read_text()) for p in sorted((work / "cache").glob("*.json"))}
        return {
            "node": node,
            "units": units,
            "log": _read(log_path),
            "code": code,
            "error": error,
            "identity": identity,
            "kept": str(folder) if keep_merges and merge is not None and identity is not None else None,
            "started": started,
            "merge_s": merge_s,
            "finished": time.time(),
        }
    finally:
        if keep_merges and merge is not None:
            for path in work.iterdir():
                if path.name != "merges":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            shutil.rmtree(work, ignore_errors=True)


def _remove_leftovers() -> None:
    """Remove the folders of units whose Ray worker was killed on this node (it could not clean up)."""
    for path in Path(tempfile.gettempdir()).glob(f"{UNIT_PREFIX}*-*"):
        pid = path.name[len(UNIT_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _merge_here(merge: NodeMerge, folder: Path, log_path: Path) -> Optional[str]:
    """Merge with the executor's one entry point, as a local sweep would; a failure is one line."""
    from mergekit_reasoning.core.errors import RecipeError
    from mergekit_reasoning.executor import run
    from mergekit_reasoning.executor.recipe import Recipe

    recipe = Recipe.from_text(merge.recipe_text, source=f"merge {merge.name}")
    lambdas = None if merge.lam is None else [merge.lam]
    try:
        with open(log_path, "a") as log_file:
            run.merge(recipe, [folder], lambdas=lambdas, overwrite=True, echo=lambda line: print(line, file=log_file))
    except RecipeError as exc:
        return f"merge of {merge.name} failed: {exc}"
    finally:
        if "mergekit.io.tasks" in sys.modules:  # this Ray worker lives on: let go of the inputs' mappings
            sys.modules["mergekit.io.tasks"].LoaderCache().flush_all()
    return None


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""
