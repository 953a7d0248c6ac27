"""`run_bench`: score labelled models under conditions and write table, results file and plots."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from mergekit_reasoning.bench import registry, sandbox
from mergekit_reasoning.bench.children import is_main_rank
from mergekit_reasoning.bench.cluster import NodeMerge, identity_of, score_units
from mergekit_reasoning.bench.comparisons import compare_units, default_contrasts, item_entries, statistics_settings
from mergekit_reasoning.bench.conditions import Condition, parse_conditions
from mergekit_reasoning.bench.engines import engine_settings, score_identity
from mergekit_reasoning.bench.identity import check_model, package_versions
from mergekit_reasoning.bench.plots import plot_deltas, plot_scores
from mergekit_reasoning.bench.report import markdown_table
from mergekit_reasoning.bench.results import jsonable, load_unit, unit_key
from mergekit_reasoning.core.errors import BenchError

log = logging.getLogger(__name__)


def _config_hash() -> str:
    """Hash of the task configs, so a changed prompt or filter invalidates cached scores."""
    digest = hashlib.sha256()
    for path in sorted(registry.TASKS_DIR.iterdir()):
        if path.is_file() and path.suffix in {".yaml", ".py", ""}:
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BenchRun:
    """What a run decided before scoring anything: the models, tasks, conditions and
    engine, where it writes, and the settings recorded in its results."""

    models: Dict[str, str]
    tasks: List[str]
    conditions: List[Condition]
    own_conditions: Dict[str, List[Condition]]  # labels scored under conditions of their own
    out: Path
    engine: dict  # engines.engine_settings
    scoring: dict  # engines.score_identity: what of the engine can move a score
    settings: dict  # recorded in results.json
    identities: Dict[str, dict]  # label -> identity.model_identity
    plots: bool
    progress: bool
    contrasts: tuple = ()  # (label, condition, baseline label, baseline condition) beyond the defaults
    ray: Optional[str] = None  # a Ray cluster's address (`auto`, `local`): units are scored as its tasks
    keep_merges: bool = False  # a node merge stays on its node's disk after scoring

    @property
    def cache_dir(self) -> Path:
        return self.out / "cache"

    def units(self) -> List[tuple]:
        """Every (label, condition, task, variant) the run scores, in table order."""
        return [
            (label, cond, task, variant)
            for label in self.models
            for cond in self.own_conditions.get(label, self.conditions)
            for task in self.tasks
            for variant in registry.variants(task, self.settings["adversarial"])
        ]

    def key_of(self, label, cond, task, variant) -> str:
        """The cache key of one unit: everything that decides its score."""
        ident = self.identities[label]
        return unit_key(
            model=ident.get("sha256") or [ident.get("id"), ident.get("revision")],
            task=registry.lm_eval_name(task, variant),
            condition=cond.name,
            **{
                k: self.settings[k]
                for k in ("limit", "data_dir", "adversarial_seed", "max_gen_toks", "task_config_hash")
            },
            samples=self.settings["log_samples"],
            scoring=self.scoring,
            sandbox=self.settings["sandbox"] if registry.dataset(task) == "humaneval" else None,
        )


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
    contrasts: Iterable[tuple] = (),
    ray: Optional[str] = None,
    keep_merges: bool = False,
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
    Every Δ gets paired statistics from the per-item outcomes (comparisons.py): each
    label against the baseline under the same condition, and each of `contrasts`,
    (label, condition, other label, other condition), e.g. against the baseline under
    the plain prompt. `ray`: score each model as a task on the Ray cluster at that address
    (`auto`: the one `ray start` made; `local`: a new one on this machine), see cluster.py;
    a model may then be a cluster.NodeMerge, merged on the node that scores it (removed
    afterwards unless `keep_merges`).
    """
    run = plan(
        models,
        tasks,
        conditions,
        out_dir,
        data_dir=data_dir,
        limit=limit,
        baseline=baseline,
        adversarial=adversarial,
        adversarial_seed=adversarial_seed,
        engine=engine,
        dtype=dtype,
        batch_size=batch_size,
        device=device,
        max_gen_toks=max_gen_toks,
        log_samples=log_samples,
        plots=plots,
        progress=progress,
        extra=extra,
        allow_weak_sandbox=allow_weak_sandbox,
        model_conditions=model_conditions,
        contrasts=contrasts,
        ray=ray,
        keep_merges=keep_merges,
        **engine_options,
    )
    units = run.units()
    score_missing(run, units)
    if not is_main_rank():
        return None
    return write_report(run, units)


def plan(
    models,
    tasks,
    conditions,
    out_dir,
    *,
    data_dir,
    limit,
    baseline,
    adversarial,
    adversarial_seed,
    engine,
    dtype,
    batch_size,
    device,
    max_gen_toks,
    log_samples,
    plots,
    progress,
    extra,
    allow_weak_sandbox,
    model_conditions,
    contrasts=(),
    ray=None,
    keep_merges=False,
    **engine_options,
) -> BenchRun:
    """Check every option and model, and settle what the run scores and records."""
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
        if isinstance(ref, NodeMerge):
            if ray is None:
                raise BenchError(f"model {label!r} is merged on the node that scores it, which needs a Ray cluster")
        else:
            check_model(label, str(ref))
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
    return BenchRun(
        models=dict(models),
        tasks=task_list,
        conditions=conds,
        own_conditions=own,
        out=Path(out_dir),
        engine=engine_cfg,
        scoring=scoring,
        settings=settings,
        identities={label: identity_of(ref, Path(out_dir) / "cache") for label, ref in models.items()},
        plots=plots,
        progress=progress,
        contrasts=_checked_contrasts(contrasts, models, conds, own),
        ray=ray,
        keep_merges=keep_merges,
    )


def _checked_contrasts(contrasts, models, conds, own) -> tuple:
    """(label, condition, baseline label, baseline condition) tuples, each naming a scored pair."""
    out = []
    for contrast in contrasts:
        label, cond, base_label, base_cond = contrast
        cond, base_cond = (c if isinstance(c, Condition) else parse_conditions(c)[0] for c in (cond, base_cond))
        for lab, c in ((label, cond), (base_label, base_cond)):
            if lab not in models:
                raise BenchError(f"contrast {contrast}: {lab!r} is not one of the model labels {list(models)}")
            if c not in own.get(lab, conds):
                raise BenchError(f"contrast {contrast}: {lab!r} is not scored under condition {c.name!r}")
        out.append((label, cond.name, base_label, base_cond.name))
    return tuple(out)


def score_missing(run: BenchRun, units: List[tuple]) -> None:
    """Score, in child processes or as Ray tasks, every unit the cache does not hold yet."""
    todo: Dict[str, Dict[Condition, List[tuple]]] = {}
    for unit in units:
        if load_unit(run.cache_dir, run.key_of(*unit)) is None:
            todo.setdefault(unit[0], {}).setdefault(unit[1], []).append(unit)
    missing = sum(len(u) for per in todo.values() for u in per.values())
    log.info("%d of %d scoring units already done", len(units) - missing, len(units))
    if todo:
        score_units(
            run.models,
            todo,
            run.key_of,
            run.out,
            run.settings,
            run.engine,
            run.progress,
            ray=run.ray,
            on_identity=run.identities.__setitem__,
            keep_merges=run.keep_merges,
        )


def write_report(run: BenchRun, units: List[tuple]) -> dict:
    """results.json, table.md and the plots, from the cached units; the document."""
    done: Dict[tuple, dict] = {}
    for unit in units:
        done[unit] = load_unit(run.cache_dir, run.key_of(*unit))
        if done[unit] is None:
            raise BenchError(f"model {unit[0]!r}: no score for {unit[2]} ({unit[3]}, {unit[1].name}) after scoring")
    data_dir = run.settings["data_dir"]
    document = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": run.settings,
        "packages": package_versions(),
        "models": {label: {"ref": str(ref), **run.identities[label]} for label, ref in run.models.items()},
        "data": {task: _safe_source(task, data_dir) for task in run.tasks},
        "scores": [
            {"label": u[0], "condition": u[1].name, "task": u[2], "variant": u[3], **r}
            for u in units
            for r in done[u]["records"]
        ],
    }
    contrasts = default_contrasts(units, run.settings["baseline"])
    contrasts += [c for c in run.contrasts if c not in contrasts]
    comparisons, without_items = compare_units(contrasts, units, done)
    document["statistics"] = {
        **statistics_settings(),
        **({"units_without_items": without_items} if without_items else {}),
    }
    document["comparisons"] = comparisons
    document["items"] = item_entries(units, done)
    if run.settings["log_samples"]:
        document["samples"] = [
            {"label": u[0], "condition": u[1].name, "task": u[2], "variant": u[3], "samples": done[u].get("samples")}
            for u in units
        ]
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(results_text(document))
    (out / "table.md").write_text(markdown_table(document))
    if run.plots:
        plot_scores(document, out / "plots" / "scores.png")
        plot_deltas(document, out / "plots" / "deltas.png")
    return document


# a list broken over lines whose items are numbers, nulls or short plain strings (item ids)
_FLAT_LIST = re.compile(r'\[\n(?:\s*(?:-?[0-9][0-9eE.+\-]*|null|"[A-Za-z0-9_:./\-]*"),?)*\s*\]')


def results_text(document: dict) -> str:
    """results.json's text: indented, but each list of numbers or ids (per-item outcomes,
    thousands of them) on one line. Only a list the indenting broke over lines is joined,
    and JSON strings hold no raw newline nor (these) a comma, so no string is touched."""
    text = json.dumps(jsonable(document), indent=1)
    return _FLAT_LIST.sub(lambda m: "[" + ",".join(x.strip() for x in m.group(0)[1:-1].split(",")) + "]", text)


def _safe_source(task: str, data_dir: Optional[str]) -> dict:
    try:
        return registry.data_source(task, data_dir)
    except BenchError as exc:
        return {"error": str(exc)}
