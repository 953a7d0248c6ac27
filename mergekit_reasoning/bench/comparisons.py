"""Every Δ a table shows, with its paired statistics, from the per-item outcomes the units keep.

A contrast is one model under one condition against another (the baseline) under a
condition, on the items both were scored on: by default each label against the
baseline under the same condition; `reproduce` adds each against the baseline under
the plain prompt. For each task, variant, subtask, metric and filter both units
report, the per-item values are paired by item id (paired.compare); a group (BBH) is
compared over its subtasks, stratified, aggregated as lm-eval aggregates the group.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from mergekit_reasoning.bench import paired, registry
from mergekit_reasoning.bench.results import item_values
from mergekit_reasoning.core.errors import BenchError

Contrast = Tuple[str, str, str, str]  # label, condition, baseline label, baseline condition


def statistics_settings(seed: int = paired.SEED) -> dict:
    """How every Δ's statistics were computed, for results.json."""
    return {
        "level": paired.LEVEL,
        "power": paired.POWER,
        "binary": f"{paired.MCNEMAR} (two-sided binomial test on the discordant items; exact conditional interval)",
        "other": f"{paired.BOOTSTRAP} (percentile interval; groups resampled within each subtask)",
        "n_resamples": paired.N_RESAMPLES,
        "seed": seed,
    }


def default_contrasts(units: Iterable[tuple], baseline: str) -> List[Contrast]:
    """Each label against the baseline under the same condition (where the baseline has it)."""
    pairs = {(u[0], u[1].name) for u in units}
    conds = {c for label, c in pairs if label == baseline}
    out: List[Contrast] = []
    for label, cond in dict.fromkeys((u[0], u[1].name) for u in units):
        if label != baseline and cond in conds and (label, cond, baseline, cond) not in out:
            out.append((label, cond, baseline, cond))
    return out


def item_entries(units: Iterable[tuple], done: Dict[tuple, dict]) -> List[dict]:
    """results.json's per-item outcomes: one entry per unit and lm-eval task (ids, values)."""
    out = []
    for u in units:
        for name, entry in (done[u].get("items") or {}).items():
            out.append({"label": u[0], "condition": u[1].name, "task": u[2], "variant": u[3], "lm_task": name, **entry})
    return out


def _group_aggregate(task: str, metric: str, filt: str):
    from lm_eval.api.metrics import aggregate_subtask_metrics

    weight = registry.group_weight_by_size(task, metric, filt)
    return lambda means, sizes: aggregate_subtask_metrics(means, sizes, weight)


def _strata(task: str, variant: str, subtask: Optional[str], items: dict, key: str, names) -> Dict[str, dict]:
    """Stratum name -> item id -> value, for one record of a unit; docs digests checked by the caller."""
    if subtask is not None:
        wanted = {f"{registry.BBH_PREFIX}_{subtask}": subtask}
    elif registry.group_subtask_names(task):
        wanted = registry.group_subtask_names(task)
    else:
        wanted = {registry.lm_eval_name(task, variant): task}
    return {shown: item_values(items[name], key) for name, shown in wanted.items() if name in items}


def _check_documents(where: str, base_items: dict, other_items: dict, names) -> None:
    for name in sorted(set(base_items) & set(other_items)):
        if base_items[name].get("docs_sha256") != other_items[name].get("docs_sha256"):
            raise BenchError(
                f"task {where}: {names[0]} and {names[1]} were scored on different documents under the same item ids "
                f"({name}; did the data change between runs?); paired statistics need the same items: rescore both"
            )


def _mean(values: Dict[str, dict]) -> Optional[float]:
    vals = [v for per in values.values() for v in per.values()]
    return sum(vals) / len(vals) if vals else None


def compare_units(
    contrasts: Iterable[Contrast], units: Iterable[tuple], done: Dict[tuple, dict], seed: int = paired.SEED
) -> Tuple[List[dict], List[str]]:
    """The paired comparisons of every contrast, and the units that had no per-item outcomes
    (cached before they were kept; their Δ is shown without an interval)."""
    by_key = {(u[0], u[1].name, u[2], u[3]): u for u in units}
    out: List[dict] = []
    missing: List[str] = []
    for label, cond, base_label, base_cond in contrasts:
        names = (f"{base_label} ({base_cond})" if base_cond != cond else base_label, label)
        for (lab, c, task, variant), unit in by_key.items():
            if (lab, c) != (label, cond) or (base_label, base_cond, task, variant) not in by_key:
                continue
            base_unit = by_key[(base_label, base_cond, task, variant)]
            items, base_items = done[unit].get("items"), done[base_unit].get("items")
            if not items or not base_items:
                for u, it in ((unit, items), (base_unit, base_items)):
                    tag = f"{u[0]} {u[2]} ({u[3]}, {u[1].name})"
                    if not it and tag not in missing:
                        missing.append(tag)
                continue
            where = task if variant == "plain" else f"{task} ({variant})"
            _check_documents(where, base_items, items, names)
            base_records = {(r["subtask"], r["metric"], r["filter"]): r for r in done[base_unit]["records"]}
            for rec in done[unit]["records"]:
                base_rec = base_records.get((rec["subtask"], rec["metric"], rec["filter"]))
                if base_rec is None or rec["value"] is None or base_rec["value"] is None:
                    continue
                key = f"{rec['metric']},{rec['filter']}"
                other = _strata(task, variant, rec["subtask"], items, key, names)
                base = _strata(task, variant, rec["subtask"], base_items, key, names)
                if not other or not any(other.values()) or not _reproduces(other, rec, task):
                    continue  # no per-item mean behind this metric: its Δ stays without an interval
                if not _reproduces(base, base_rec, task):
                    continue
                group = (
                    _group_aggregate(task, rec["metric"], rec["filter"])
                    if rec["subtask"] is None and registry.group_subtask_names(task)
                    else None
                )
                shown = where if rec["subtask"] is None else f"{where} ({rec['subtask']})"
                result = paired.compare(shown, base, other, group=group, names=names, seed=seed)
                out.append(
                    {
                        "label": label,
                        "condition": cond,
                        "baseline": base_label,
                        "baseline_condition": base_cond,
                        "task": task,
                        "variant": variant,
                        "subtask": rec["subtask"],
                        "metric": rec["metric"],
                        "filter": rec["filter"],
                        **result.as_dict(),
                    }
                )
    return out, missing


def _reproduces(values: Dict[str, dict], rec: dict, task: str) -> bool:
    """The per-item values give lm-eval's score: its mean (a group: aggregated the group's way)."""
    if not values or not all(values.values()):
        return False
    if rec["subtask"] is None and registry.group_subtask_names(task):
        agg = _group_aggregate(task, rec["metric"], rec["filter"])
        means = [sum(v.values()) / len(v) for v in values.values()]
        got = agg(means, [len(v) for v in values.values()])
    else:
        got = _mean(values)
    return got is not None and abs(got - rec["value"]) <= 1e-9 * max(1.0, abs(rec["value"]))


def cell_key(label, cond, base_label, base_cond, task, variant, subtask, metric, filt) -> tuple:
    return (label, cond, base_label, base_cond, task, variant, subtask, metric, filt)


def index(comparisons: Iterable[dict]) -> Dict[tuple, dict]:
    """Comparisons by the Δ cell they belong to (cell_key)."""
    return {
        cell_key(
            c["label"],
            c["condition"],
            c["baseline"],
            c["baseline_condition"],
            c["task"],
            c["variant"],
            c["subtask"],
            c["metric"],
            c["filter"],
        ): c
        for c in comparisons
    }
