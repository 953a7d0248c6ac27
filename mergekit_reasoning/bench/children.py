"""One child process per model: start the worker, follow its progress, turn a crash into one line.

vLLM (and CUDA in general) returns GPU memory only when its process exits, so a λ
sweep that loaded every model in one process would run out of memory. Results
come back through the unit cache the worker writes, so whatever a child finished
before it died is kept, and a rerun starts from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from mergekit_reasoning.bench.engines import child_environment
from mergekit_reasoning.core.errors import BenchError

POLL_SECONDS = 1.0


def is_main_rank() -> bool:
    """False in the non-zero ranks of `accelerate launch` (they score, rank 0 writes)."""
    return os.environ.get("RANK", "0") == "0"


def file_stem(label: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.=+-]", "_", label)[:60]
    return f"{safe}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"


def describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with status {code}"


def score_in_children(
    models, todo, key_of, out: Path, settings: dict, engine: dict, progress: bool, *, together: bool = False
) -> None:
    """Score each model's missing units in its own process; raise one BenchError naming failed models.

    `together`: all the models in one process, one after the other (tune's candidates on the
    hf engine: one interpreter start instead of one per candidate). `settings["serve"]`,
    where set, is the items data.serving serves (tune's splits).
    """
    from tqdm.auto import tqdm

    cache_dir, jobs_dir, logs_dir = out / "cache", out / "cache" / "jobs", out / "logs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    total = sum(len(units) for per in todo.values() for units in per.values())
    bar = tqdm(total=total, desc="bench units", disable=not progress)
    failures = []
    groups = [list(todo)] if together else [[label] for label in todo]
    for labels in groups:
        keys = [key_of(*unit) for label in labels for units in todo[label].values() for unit in units]
        job = build_job(labels, models, todo, key_of, cache_dir.resolve(), settings, engine)
        label = job_label(labels)
        stem = file_stem(label)
        job_path = jobs_dir / f"{stem}.json"
        job_path.write_text(json.dumps(job))
        log_path = logs_dir / f"{stem}.log"
        bar.set_postfix_str(label)
        before = bar.n
        code = run_child(
            job_path, log_path, lambda before=before, keys=keys: bar.update(before + _count(cache_dir, keys) - bar.n)
        )
        bar.update(before + _count(cache_dir, keys) - bar.n)
        if code != 0:
            error_path = job_path.with_suffix(".error")
            reason = error_path.read_text().strip() if error_path.is_file() else describe_exit(code)
            failures.append(f"{named(labels, models)}: {reason} [log: {log_path}]")
        elif is_main_rank() and _count(cache_dir, keys) < len(keys):
            failures.append(f"{named(labels, models)}: finished without saving all its scores [log: {log_path}]")
    bar.close()
    if failures:
        raise BenchError("; ".join(failures) + " - finished scores are kept; rerun to resume")


def build_job(labels, models, todo, key_of, cache_dir: Path, settings: dict, engine: dict) -> dict:
    """The worker's job for `labels` (one model, or several scored in turn): what to load, which
    units to score and under which cache key each is saved (the Ray path gives keys of its own)."""
    entries = [
        {
            "label": label,
            "ref": str(models[label]),
            "runs": [
                {
                    "condition": asdict(cond),
                    "units": [{"key": key_of(*unit), "name": _lm_eval_name(unit)} for unit in units],
                }
                for cond, units in todo[label].items()
            ],
        }
        for label in labels
    ]
    return {
        **(entries[0] if len(entries) == 1 else {"models": entries}),
        "engine": engine,
        "cache_dir": str(cache_dir),
        "data_dir": settings["data_dir"],
        "limit": settings["limit"],
        "max_gen_toks": settings["max_gen_toks"],
        "log_samples": settings["log_samples"],
        "allow_weak_sandbox": settings["allow_weak_sandbox"],
        **({"serve": settings["serve"]} if settings.get("serve") is not None else {}),
    }


def job_label(labels) -> str:
    return labels[0] if len(labels) == 1 else f"{labels[0]}+{len(labels) - 1}"


def named(labels, models) -> str:
    return ", ".join(f"model {label!r} ({models[label]})" for label in labels)


def _lm_eval_name(unit) -> str:
    from mergekit_reasoning.bench import registry

    return registry.lm_eval_name(unit[2], unit[3])


def _count(cache_dir: Path, keys) -> int:
    """Units saved so far (save_unit writes atomically, so a file present is a unit finished)."""
    return sum((cache_dir / f"{key}.json").is_file() for key in keys)


def run_child(job_path: Path, log_path: Path, on_tick, preexec_fn=None) -> int:
    """Run the worker on one job with a bounded poll; an interrupt stops the child too.

    `preexec_fn` runs in the child before the worker starts (a Ray task ties the child's life to its own)."""
    command = [sys.executable, "-m", "mergekit_reasoning.bench.worker", str(job_path)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=child_environment(), preexec_fn=preexec_fn
        )
        try:
            while True:
                try:
                    return proc.wait(timeout=POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    on_tick()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
