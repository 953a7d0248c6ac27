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
from .conditions import Condition, parse_conditions
from .errors import BenchError
from .identity import check_model, model_identity, package_versions
from .results import jsonable, load_unit, records_for, samples_for, save_unit, unit_key

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
    batch_size: Union[int, str] = "auto",
    device: Optional[str] = None,
    max_gen_toks: Optional[int] = None,
    log_samples: bool = False,
    plots: bool = True,
    progress: bool = True,
    extra: Optional[dict] = None,
    allow_weak_sandbox: bool = False,
) -> dict:
    """Score every model under every condition on every task; return the results document.

    `models` maps labels to local folders or hub ids. Finished units are reused from
    `out_dir/cache`. Writes `results.json`, `table.md` and (unless `plots=False`)
    `plots/scores.png` under `out_dir`. HumanEval needs full sandbox isolation unless
    `allow_weak_sandbox`; the isolation used is recorded either way.
    """
    if not models:
        raise BenchError("no models given")
    task_list = registry.expand(tasks)
    conds = parse_conditions(conditions)
    baseline = baseline or next(iter(models))
    if baseline not in models:
        raise BenchError(f"baseline {baseline!r} is not one of the model labels {list(models)}")
    if data_dir:
        data_dir = str(Path(data_dir).expanduser().resolve())
        for task in task_list:
            registry.check_data(task, data_dir)
    sandbox_used = sandbox.declare(allow_weak_sandbox) if "humaneval" in task_list else None
    for label, ref in models.items():
        check_model(label, str(ref))

    out = Path(out_dir)
    cache_dir = out / "cache"
    settings = {
        "tasks": task_list,
        "conditions": [c.name for c in conds],
        "limit": limit,
        "data_dir": data_dir,
        "data_source": "local" if data_dir else "hub",
        "adversarial": adversarial,
        "adversarial_seed": adversarial_seed,
        "baseline": baseline,
        "batch_size": batch_size,
        "device": device,
        "max_gen_toks": max_gen_toks,
        "log_samples": log_samples,
        "task_config_hash": _config_hash(),
        "sandbox": sandbox_used,
        **(extra or {}),
    }
    identities = {label: model_identity(str(ref)) for label, ref in models.items()}
    units = [
        (label, cond, task, variant)
        for label in models
        for cond in conds
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
        )

    done: Dict[tuple, dict] = {}
    todo: Dict[str, Dict[Condition, List[tuple]]] = {}
    for unit in units:
        cached = load_unit(cache_dir, key_of(*unit))
        if cached is not None:
            done[unit] = cached
        else:
            todo.setdefault(unit[0], {}).setdefault(unit[1], []).append(unit)
    log.info("%d of %d scoring units already done", len(done), len(units))

    if todo:
        _score(models, todo, done, key_of, cache_dir, settings, progress)

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


def _score(models, todo, done, key_of, cache_dir, settings, progress) -> None:
    """Load each model once and evaluate its missing units, one lm-eval call per condition."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from tqdm.auto import tqdm

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    manager = TaskManager(
        include_path=str(registry.TASKS_DIR),
        include_defaults=False,
        metadata={"data_dir": settings["data_dir"] or ""},
    )
    total = sum(len(c) for per in todo.values() for c in per.values())
    bar = tqdm(total=total, desc="bench units", disable=not progress)
    gen_kwargs = {"max_gen_toks": settings["max_gen_toks"]} if settings["max_gen_toks"] else None
    for label, per_condition in todo.items():
        lm = _load_model(label, str(models[label]), settings)
        for cond, units in per_condition.items():
            names = [registry.lm_eval_name(task, variant) for _, _, task, variant in units]
            bar.set_postfix_str(f"{label} / {cond.name}")
            res = simple_evaluate(
                model=lm,
                tasks=names,
                limit=settings["limit"],
                task_manager=manager,
                system_instruction=cond.system_instruction,
                apply_chat_template=cond.chat,
                fewshot_as_multiturn=cond.chat,
                gen_kwargs=gen_kwargs,
                log_samples=settings["log_samples"],
                confirm_run_unsafe_code=True,
                verbosity="ERROR",
            )
            for unit, name in zip(units, names):
                result = {"records": records_for(res, name)}
                if settings["log_samples"]:
                    result["samples"] = samples_for(res, name)
                done[unit] = save_unit(cache_dir, key_of(*unit), result)
                bar.update(1)
        del lm
    bar.close()


def _load_model(label: str, ref: str, settings: dict):
    """An lm-eval HFLM for one model; any failure becomes one line naming the label."""
    from lm_eval.models.huggingface import HFLM

    device = settings["device"]
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size = settings["batch_size"]
    if batch_size == "auto" and not str(device).startswith("cuda"):
        batch_size = 8  # lm-eval's automatic search is for accelerators
    try:
        return HFLM(pretrained=ref, batch_size=batch_size, device=device, dtype="auto")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BenchError(f"cannot load model {label!r} from {ref}: {type(exc).__name__}: {first}") from exc
