"""Score one model in a process of its own: `python -m mergekit_reasoning.bench.worker JOB.json`.

vLLM hands GPU memory back only when its process exits, so the runner starts one
of these per model (per λ of a sweep). The job file says what to score; every
finished unit is written to the run's unit cache (results.save_unit) the moment
lm-eval returns it, which is how results reach the parent and how a rerun after
a crash resumes. Every unit keeps its per-item outcomes (ids and values, for paired
statistics); the full samples (responses, targets) only when asked. A failure is written as one line to the job's `.error` file.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from mergekit_reasoning.bench.conditions import Condition
from mergekit_reasoning.core.errors import BenchError


def score_job(job: dict) -> None:
    """One model's job, or several models' (`models`: each with its label, ref and runs) in turn."""
    for entry in job.get("models") or [job]:
        score_model({**job, **entry})


def score_model(job: dict) -> None:
    """Load the model once and run each condition's missing units in one lm-eval call."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from mergekit_reasoning.bench import data, registry, sandbox
    from mergekit_reasoning.bench.engines import make_lm
    from mergekit_reasoning.bench.results import items_for, records_for, samples_for, save_unit

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    sandbox.allow_weak_isolation(job.get("allow_weak_sandbox", False))  # the parent checked and recorded it
    cache_dir = Path(job["cache_dir"])
    manager = TaskManager(
        include_path=str(registry.TASKS_DIR),
        include_defaults=False,
        metadata={"data_dir": job["data_dir"] or ""},
    )
    gen_kwargs = {"max_gen_toks": job["max_gen_toks"]} if job["max_gen_toks"] else None
    lm = make_lm(job["label"], job["ref"], job["engine"])
    for run in job["runs"]:
        cond = Condition(**run["condition"])
        names = [unit["name"] for unit in run["units"]]
        with data.serving(job.get("serve")):
            res = _evaluate(simple_evaluate, lm, names, job, manager, cond, gen_kwargs)
        if res is None:  # a non-zero rank under `accelerate launch`: rank 0 writes
            continue
        for unit in run["units"]:
            result = {"records": records_for(res, unit["name"]), "items": items_for(res, unit["name"])}
            if job["log_samples"]:
                result["samples"] = samples_for(res, unit["name"])
            save_unit(cache_dir, unit["key"], result)
    del lm  # before the next model of the job is loaded
    import gc

    gc.collect()


def _evaluate(simple_evaluate, lm, names, job, manager, cond, gen_kwargs):
    return simple_evaluate(
        model=lm,
        tasks=names,
        limit=job["limit"],
        task_manager=manager,
        system_instruction=cond.system_instruction,
        apply_chat_template=cond.chat,
        fewshot_as_multiturn=cond.chat,
        gen_kwargs=gen_kwargs,
        log_samples=True,  # per-item outcomes, for paired statistics; full samples only if asked
        confirm_run_unsafe_code=True,
        verbosity="ERROR",
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mergekit_reasoning.bench.worker JOB.json", file=sys.stderr)
        return 2
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    error_path = job_path.with_suffix(".error")
    error_path.unlink(missing_ok=True)
    try:
        score_job(job)
    except BenchError as exc:
        error_path.write_text(str(exc))
        return 1
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line, traceback in the log
        import traceback

        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error_path.write_text(f"{type(exc).__name__}: {first}".rstrip(": "))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
