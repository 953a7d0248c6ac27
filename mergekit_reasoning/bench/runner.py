"""`run_bench`: score labelled models under conditions and write table, results file and plots."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from . import registry, sandbox
from .children import is_main_rank, score_in_children
from .conditions import Condition, parse_conditions
from .engines import engine_settings, score_identity
from .errors import BenchError
from .identity import check_model, model_identity, package_versions
from .results import jsonable, load_unit, unit_key

log = logging.getLogger(__name__)


def _config_hash() -> str:
    """Hash of the task configs, so a changed prompt or filter invalidates cached scores."""
    digest = hashlib.sha256()
    for path in sorted(registry.TASKS_DIR.iterdir()):
        if path.is_file() and path.suffix in {".yaml", ".py", ""}:
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def run_bench(
    models: Dict[str, str],
    tasks: Union[str, Iterable[str]] = ("gsm8k", "humaneval", "sciq", "bbh"),
    conditions: Union[str, Iterable[Union[str, Condition]], None] = None,
    out_dir: Union[str, os.PathLike] = "bench-out",
    *,
    data_dir: Optional[str] = None,
    limit: Optional[int] = None,
    baseline: Optional[str] = None,
    adversarial: bool = False,
    adversarial_seed: int = 0,
    engine: str = "hf",
    dtype: str = "auto",
    batch_size: Union[int, str] = "auto",
    device: Optional[str] = None,
    max_gen_toks: Optional[int] = None,
    log_samples: bool = False,
    plots: bool = True,
    progress: bool = True,
    extra: Optional[dict] = None,
    allow_weak_sandbox: bool = False,
    model_conditions: Optional[Dict[str, Union[str, Iterable[Union[str, Condition]]]]] = None,
    **engine_options,
) -> Optional[dict]:
    """Score every model under every condition on every task; return the results document.

    `models` maps labels to local folders or hub ids. `engine` is lm-eval's `hf` or
    `vllm` model class; further keyword arguments are that engine's options (see
    engines.ENGINE_OPTIONS), e.g. `tensor_parallel_size=2`. Each model is scored in
    a child process of its own; finished units are kept in `out_dir/cache` and
    reused. Writes `results.json`, `table.md` and (unless `plots=False`)
    `plots/scores.png` under `out_dir`. Under `accelerate launch`, only rank 0
    writes and returns the document; the other ranks return None. HumanEval needs
    full sandbox isolation unless `allow_weak_sandbox`; the isolation used is
    recorded either way, and is part of a HumanEval score's cache key.
    `model_conditions` maps some labels to conditions of their own, in place of
    `conditions` (e.g. a reference model scored only with the think prompt).
    """
    if not models:
        raise BenchError("no models given")
    task_list = registry.expand(tasks)
    conds = parse_conditions(conditions)
    own = {label: parse_conditions(spec) for label, spec in (model_conditions or {}).items()}
    unknown = sorted(set(own) - set(models))
    if unknown:
        raise BenchError(f"model_conditions names {unknown[0]!r}, which is not one of the model labels {list(models)}")
    baseline = baseline or next(iter(models))
    if baseline not in models:
        raise BenchError(f"baseline {baseline!r} is not one of the model labels {list(models)}")
    engine_cfg = engine_settings(engine, dtype, batch_size, device, **engine_options)
    if data_dir:
        data_dir = str(Path(data_dir).expanduser().resolve())
        for task in task_list:
            registry.check_data(task, data_dir)
    sandbox_used = sandbox.declare(allow_weak_sandbox) if "humaneval" in task_list else None
    for label, ref in models.items():
        check_model(label, str(ref))

    out = Path(out_dir)
    cache_dir = out / "cache"
    scoring = score_identity(engine_cfg)
    settings = {
        "tasks": task_list,
        "conditions": [c.name for c in conds],
        "limit": limit,
        "data_dir": data_dir,
        "data_source": "local" if data_dir else "hub",
        "adversarial": adversarial,
        "adversarial_seed": adversarial_seed,
        "baseline": baseline,
        "engine": engine,
        "dtype": dtype,
        "engine_options": engine_cfg["options"],
        "batch_size": batch_size,
        "device": device,
        "scored_on": scoring["device"],
        "max_gen_toks": max_gen_toks,
        "log_samples": log_samples,
        "task_config_hash": _config_hash(),
        "sandbox": sandbox_used,
        "allow_weak_sandbox": allow_weak_sandbox,
        **({"model_conditions": {label: [c.name for c in c_list] for label, c_list in own.items()}} if own else {}),
        **(extra or {}),
    }
    identities = {label: model_identity(str(ref)) for label, ref in models.items()}
    units = [
        (label, cond, task, variant)
        for label in models
        for cond in own.get(label, conds)
        for task in task_list
        for variant in registry.variants(task, adversarial)
    ]

    def key_of(label, cond, task, variant):
        ident = identities[label]
        return unit_key(
            model=ident.get("sha256") or [ident.get("id"), ident.get("revision")],
            task=registry.lm_eval_name(task, variant),
            condition=cond.name,
            **{k: settings[k] for k in ("limit", "data_dir", "adversarial_seed", "max_gen_toks", "task_config_hash")},
            samples=log_samples,
            scoring=scoring,
            sandbox=settings["sandbox"] if registry.dataset(task) == "humaneval" else None,
        )

    todo: Dict[str, Dict[Condition, List[tuple]]] = {}
    for unit in units:
        if load_unit(cache_dir, key_of(*unit)) is None:
            todo.setdefault(unit[0], {}).setdefault(unit[1], []).append(unit)
    missing = sum(len(u) for per in todo.values() for u in per.values())
    log.info("%d of %d scoring units already done", len(units) - missing, len(units))

    if todo:
        score_in_children(models, todo, key_of, out, settings, engine_cfg, progress)
    if not is_main_rank():
        return None
    done: Dict[tuple, dict] = {}
    for unit in units:
        done[unit] = load_unit(cache_dir, key_of(*unit))
        if done[unit] is None:
            raise BenchError(f"model {unit[0]!r}: no score for {unit[2]} ({unit[3]}, {unit[1].name}) after scoring")

    document = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "packages": package_versions(),
        "models": {label: {"ref": str(ref), **identities[label]} for label, ref in models.items()},
        "data": {task: _safe_source(task, data_dir) for task in task_list},
        "scores": [
            {"label": u[0], "condition": u[1].name, "task": u[2], "variant": u[3], **r}
            for u in units
            for r in done[u]["records"]
        ],
    }
    if log_samples:
        document["samples"] = [
            {"label": u[0], "condition": u[1].name, "task": u[2], "variant": u[3], "samples": done[u].get("samples")}
            for u in units
        ]
    from .report import markdown_table

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(jsonable(document), indent=1))
    (out / "table.md").write_text(markdown_table(document))
    if plots:
        from .plots import plot_scores

        plot_scores(document, out / "plots" / "scores.png")
    return document


def _safe_source(task: str, data_dir: Optional[str]) -> dict:
    try:
        return registry.data_source(task, data_dir)
    except BenchError as exc:
        return {"error": str(exc)}
